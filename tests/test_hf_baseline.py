"""scripts/hf_baseline.py: the same jsonl workload through HF ``generate`` in padded static batches gives the
pipeline's tokens and finish reasons, and writes the pipeline's metrics.json fields."""

from __future__ import annotations

import json
import random

import pytest

from pp_runtime.rundir.metrics import compute_metrics
from scripts.hf_baseline import main
from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, reference_generate, write_jsonl

PROMPT_LENS = [5, 23, 1, 17, 9]  # ragged, so batches of two are left-padded
MAX_TOKENS = [12, 3, 7, 9, 6]
JOB = ["cache.num_blocks=64", "cache.block_size=4", "device=cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


@pytest.fixture(scope="module")
def workload(model, tmp_path_factory):
    rng = random.Random(3)
    reqs = [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": m,
             "ignore_eos": True} for i, (n, m) in enumerate(zip(PROMPT_LENS, MAX_TOKENS))]
    # r0 stops on its own third token: the stop token is kept and the request ends "stop" before max_tokens.
    reqs[0]["stop_token_ids"] = [reference_generate(model, reqs[0]["prompt_token_ids"], 3)[2]]
    # r3 samples, seeded: both runs draw with stages.sampler's per-step seeds.
    reqs[3].update(temperature=0.8, top_k=40, seed=7)
    return write_jsonl(tmp_path_factory.mktemp("w") / "reqs.jsonl", reqs), reqs


@pytest.fixture(scope="module")
def runs(model, workload, tmp_path_factory):
    path, _ = workload
    root = tmp_path_factory.mktemp("runs")
    overrides = [f"model.path={model}", "workload=jsonl", f"workload.path={path}", *JOB]
    run_job_ranks(1, [*overrides, "scheduler=fcfs", f"output_dir={root / 'pipeline'}"])
    assert main(["--out", str(root / "hf"), "--batch-size", "2", *overrides, "pipeline.stages=2"]) == 0
    return root / "pipeline", root / "hf"


def test_outputs_equal_the_pipeline(runs, workload):
    pipeline, hf = map(read_outputs, runs)
    _, reqs = workload
    assert set(hf) == {r["id"] for r in reqs}
    for r in reqs:
        got, want = hf[r["id"]], pipeline[r["id"]]
        assert got["output_token_ids"] == want["output_token_ids"], r["id"]
        assert got["finish_reason"] == want["finish_reason"], r["id"]
    assert hf["r0"]["finish_reason"] == "stop" and len(hf["r0"]["output_token_ids"]) == 3
    assert [len(hf[f"r{i}"]["output_token_ids"]) for i in (1, 2, 3, 4)] == MAX_TOKENS[1:]


def test_metrics_have_the_pipeline_fields(runs):
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert set(compute_metrics([], wall_s=1.0)) <= set(metrics)
    assert metrics["policy"] == "hf-generate"
    assert metrics["stages"] == 1 and metrics["batch_size"] == 2
    assert metrics["bubble_fraction"] == {} and metrics["pipeline_bubble_fraction"] is None
    assert metrics["config"]["workload"]["kind"] == "jsonl"
    assert metrics["completed"] == metrics["num_requests"] == len(PROMPT_LENS)
    assert metrics["total_output_tokens"] == 3 + sum(MAX_TOKENS[1:])
    assert metrics["mean_itl_ms"] is not None and metrics["mean_ttft_ms"] > 0
    for rec in read_outputs(runs[1]).values():
        assert 0 < rec["ttft_s"] <= rec["e2e_s"]


def test_bad_override_exits_2(model, tmp_path, capsys):
    assert main(["--out", str(tmp_path), f"model.path={model}", "scheduler.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
