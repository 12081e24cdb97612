"""pp-sweep: Hydra-style expansion, one torchrun job per combination, failures recorded, summary files written.

The expansion and config checks are fast; each end-to-end sweep starts real torchrun jobs (a few seconds each),
so there are four of them in all, on a two-layer model.
"""

from __future__ import annotations

import csv
import json

import pytest

from launch.sweep import expand, main
from tests.tiny_models import make_tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    model = make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)
    return [f"model.path={model}", "workload=synthetic", "workload.num_requests=4", "workload.prefill_len=8",
            "workload.pd_ratio=2", "cache.num_blocks=64", "cache.block_size=4", "scheduler=fcfs", "device=cpu",
            "runtime.progress=false", "tracer.timeline=false", "pipeline.stages=1"]


def _rows(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_expand_is_the_cartesian_product_in_hydra_order():
    axes, fixed, jobs = expand(["scheduler=sarathi,orca", "scheduler.token_budget=256,512", "pipeline.stages=2",
                                "hydra.run.dir=elsewhere"])
    assert axes == ["scheduler", "scheduler.token_budget"]
    assert fixed == ["pipeline.stages=2"]
    assert [j.swept for j in jobs] == [{"scheduler": s, "scheduler.token_budget": b}
                                       for s in ("sarathi", "orca") for b in ("256", "512")]
    assert jobs[3].overrides == ("scheduler=orca", "scheduler.token_budget=512", "pipeline.stages=2")
    assert jobs[3].name == "3_scheduler-orca_token_budget-512"
    assert len({j.name for j in jobs}) == 4


def test_expand_range_and_repeated_keys():
    axes, _, jobs = expand(["scheduler.token_budget=range(8,32,8)", "pipeline.stages=1,2", "pipeline.stages=3"])
    assert axes == ["scheduler.token_budget"]  # the last value of a repeated key wins, as in Hydra
    assert [j.overrides for j in jobs] == [(f"scheduler.token_budget={b}", "pipeline.stages=3") for b in (8, 16, 24)]


def test_malformed_override_exits_2(tmp_path, capsys):
    assert main(["scheduler.token_budget=[8,16", "--out", str(tmp_path / "sweep")]) == 2
    assert "pp-sweep:" in capsys.readouterr().err


def test_dry_run_lists_jobs_and_starts_nothing(tmp_path, capsys, fixed):
    out = tmp_path / "sweep"
    assert main(["-m", "pipeline.stages=1,2", *fixed[:-1], "--dry-run", "--with-hf-baseline", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["0_stages-1", "1_stages-2", "hf_baseline"]
    assert "nproc=2" in lines[1]
    assert not out.exists()


def test_invalid_value_fails_its_job_before_any_rank_starts(tmp_path, fixed):
    out = tmp_path / "sweep"
    assert main([*fixed, "scheduler.token_budget=0,-1", "--out", str(out)]) == 1
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "scheduler.token_budget=0 is invalid" in rows[0]["error"]
    assert "scheduler.token_budget=-1 is invalid" in rows[1]["error"]
    assert not (out / rows[0]["job"]).exists()  # no ranks were started for it


def test_two_job_sweep_writes_summary(tmp_path, fixed, capsys):
    out = tmp_path / "sweep"
    assert main(["-m", "scheduler.token_budget=8,16", *fixed, "--out", str(out)]) == 0
    rows = _rows(out)
    assert [(r["scheduler.token_budget"], r["status"]) for r in rows] == [("8", "ok"), ("16", "ok")]
    for row in rows:
        metrics = json.loads((out / row["job"] / "metrics.json").read_text())
        assert metrics["config"]["scheduler"]["token_budget"] == int(row["scheduler.token_budget"])
        assert float(row["token_budget"]) == metrics["token_budget"]["value"] == int(row["scheduler.token_budget"])
        assert float(row["output_throughput"]) == pytest.approx(metrics["output_throughput"])
        assert float(row["pipeline_bubble_fraction"]) == pytest.approx(metrics["pipeline_bubble_fraction"])
        assert row["ttft_p50_ms"] and row["tbt_p99_ms"]
    md = (out / "summary.md").read_text()
    assert all(f"| {r['job']}" in md for r in rows)
    assert (out / "summary.png").read_bytes()[:8] == PNG_MAGIC
    assert rows[1]["job"] in capsys.readouterr().out  # the table is printed


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, fixed):
    out = tmp_path / "sweep"
    assert main(["debug.fail_stage=0,null", *fixed, "--out", str(out)]) == 1
    failed, ok = _rows(out)
    assert (failed["debug.fail_stage"], failed["status"]) == ("0", "failed")
    assert "injected failure on stage 0" in failed["error"]
    assert failed["output_throughput"] == ""
    assert (ok["debug.fail_stage"], ok["status"]) == ("null", "ok")
    assert float(ok["output_throughput"]) > 0
    assert "injected failure on stage 0" in (out / "summary.md").read_text()
    assert (out / "summary.png").read_bytes()[:8] == PNG_MAGIC
