"""Replay of a small real run (2 stages, tiny model, forked ranks) and pp-sim end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pp_runtime.planner import CostModel
from pp_runtime.sim.replay import MeasuredTimes, ReplayError, fit_run_cost_model, replay
from pp_runtime.trace.reports import load_events
from pp_runtime.trace.tracer import EventKind
from tests.jobs import make_config, run_job_outcomes, run_job_ranks
from tests.multiproc import run_ranks
from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("outputs.jsonl", "metrics.json", "events.npz", "trace.json", "bubbles.json", "timeline.png")
WORKLOAD = ["workload=synthetic", "workload.num_requests=4", "workload.prefill_len=12", "workload.pd_ratio=2",
            "workload.seed=3", "scheduler.token_budget=16", "cache.num_blocks=64", "cache.block_size=4"]


def _recording_rank(rank: int, world_size: int, overrides: list[str]):
    """Run a job; rank 0 also returns every micro-batch its planner launched, in order (this forked process only)."""
    from launch.rank_job import run_job
    from pp_runtime.planner.sarathi import SarathiPlanner

    plans: dict[SarathiPlanner, list[str]] = {}  # per planner: the layer split drives one over the workload first
    original = SarathiPlanner.schedule

    def schedule(self, now):
        mb = original(self, now)
        if mb is not None:
            plans.setdefault(self, []).append(repr(mb))  # held here, so no later planner reuses its key
        return mb

    SarathiPlanner.schedule = schedule
    run_job(make_config(overrides))
    return list(plans.values())[-1] if rank == 0 else None  # the job's planner, made last


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


@pytest.fixture(scope="module")
def real_run(model, tmp_path_factory):
    """A real 2-stage sarathi run (its cost model profiled at start-up) and the plans its planner made."""
    out = tmp_path_factory.mktemp("run")
    overrides = ["pipeline.stages=2", "runtime.progress=false", f"model.path={model}", "scheduler=sarathi",
                 *WORKLOAD, f"output_dir={out}"]
    plans = run_ranks(_recording_rank, 2, overrides, timeout=300)[0]
    assert plans and (out / "cost_model.json").exists()
    return out, plans


def test_replay_busy_time_is_the_cost_model_summed_piece_by_piece(real_run, tmp_path):
    run, _ = real_run
    result, rows = replay(run, out_dir=tmp_path, planner_time_us=0)
    for name in RUN_FILES:
        assert (tmp_path / name).exists(), name
    model = CostModel.from_json(run / "cost_model.json")
    bubbles = json.loads((tmp_path / "bubbles.json").read_text())
    for s in range(2):
        expected_ns = sum(round(model.predict(mb.pieces)[s] * 1e9) for mb in result.micro_batches)
        assert round(bubbles["stages"][str(s)]["busy_s"] * 1e9) == pytest.approx(expected_ns, abs=2)
    # Every request finishes where it did: the replay samples the recorded tokens.
    recorded = {r["id"]: r["output_token_ids"] for r in map(json.loads, (run / "outputs.jsonl").open())}
    replayed = {r["id"]: r["output_token_ids"] for r in map(json.loads, (tmp_path / "outputs.jsonl").open())}
    assert replayed == recorded
    figures = {r["figure"] for r in rows}
    assert {"output_throughput", "p50_tbt_ms", "p99_tbt_ms", "busy_s[0]", "idle_fraction[1]"} <= figures


def test_replay_with_measured_times_makes_the_real_runs_micro_batches(real_run, tmp_path):
    run, plans = real_run
    result, _ = replay(run, out_dir=tmp_path, measured_times=True, planner_time_us=0)
    assert [repr(mb) for mb in result.micro_batches] == plans
    measured = MeasuredTimes(load_events(str(run)))
    sim = load_events(str(tmp_path))
    for s in range(2):
        compute = sim[s][sim[s][:, 0] == EventKind.COMPUTE]
        durations = (compute[:, 2] - compute[:, 1]) / 1e9
        assert np.allclose(durations, measured.times[:, s], rtol=0, atol=1e-9)


def test_replay_of_a_resumed_run_simulates_only_the_last_attempts_requests(model, tmp_path, capsys):
    """A run stopped by SIGTERM and rerun into the same directory: metrics.json and the events are the second
    attempt's, so the replay serves exactly the requests that attempt served, with its tokens."""
    from launch.sim import replay_main

    run = tmp_path / "run"
    overrides = [f"model.path={model}", "scheduler=sarathi", "workload=synthetic", "workload.num_requests=10",
                 "workload.prefill_len=12", "workload.pd_ratio=2", "workload.seed=3", "scheduler.token_budget=16",
                 "cache.num_blocks=64", "cache.block_size=4", "runtime.drain_timeout_s=0", f"output_dir={run}"]
    run_job_outcomes(2, [*overrides, "debug.signal_after=3"])
    assert json.loads((run / "metrics.json").read_text())["status"] == "preempted"
    metrics = run_job_ranks(2, overrides)
    assert metrics["attempt"] == 2 and 0 < metrics["resumed"] < 10
    assert metrics["num_requests"] == 10 - metrics["resumed"]
    lines = [json.loads(line) for line in (run / "outputs.jsonl").open()]
    assert [r["attempt"] for r in lines] == sorted(r["attempt"] for r in lines)  # each line names its attempt

    result, _ = replay(run, out_dir=tmp_path / "replay", planner_time_us=0)
    served = {r["id"]: r["output_token_ids"] for r in lines if r["attempt"] == 2}
    replayed = {r["id"]: r["output_token_ids"] for r in map(json.loads, (tmp_path / "replay" / "outputs.jsonl").open())}
    assert replayed == served
    assert result.metrics["num_requests"] == metrics["num_requests"]
    assert result.metrics["total_output_tokens"] == metrics["total_output_tokens"]

    assert replay_main(["--replay", str(run), "--out", str(tmp_path / "measured"), "--measured-times"]) == 0
    capsys.readouterr()
    # A run dir written before lines carried their attempt: the earlier attempts' lines are the first "resumed".
    old = tmp_path / "old"
    old.mkdir()
    for name in ("metrics.json", "events.npz", "cost_model.json", "bubbles.json"):
        (old / name).write_bytes((run / name).read_bytes())
    (old / "outputs.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "attempt"}) + "\n"
                                               for r in lines))
    result, _ = replay(old, out_dir=tmp_path / "old_replay", measured_times=True, planner_time_us=0)
    assert result.metrics["total_output_tokens"] == metrics["total_output_tokens"]


def test_pp_sim_writes_a_run_that_pp_report_reads_and_replays_to_itself(model, tmp_path, capsys):
    from launch.report import main as report_main
    from launch.sim import replay_main

    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "launch.sim", "pipeline.stages=2", f"model.path={model}", "scheduler=fcfs", *WORKLOAD,
           "sim.planner_time_us=20", "sim.link=gloo", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tok/s" in proc.stdout and "bubble" in proc.stdout
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert report_main([str(out)]) == 0
    # fcfs fits no cost model: replay says what to pass.
    assert replay_main(["--replay", str(out)]) == 2
    assert "--cost-model" in capsys.readouterr().err
    # Replaying a simulated run with its own time model and planner time reproduces it exactly.
    cm = tmp_path / "cm.json"
    CostModel.default(2).to_json(cm)
    result, rows = replay(out, out_dir=tmp_path / "again", cost_model_path=str(cm), planner_time_us=20,
                          preset_links=True)
    for r in rows:
        assert r["predicted"] == pytest.approx(r["measured"], rel=1e-9, abs=1e-9), r
    # A cost model fitted to the run's own events predicts what made them.
    fitted = fit_run_cost_model(out)
    for mb in result.micro_batches:
        assert fitted.predict(mb.pieces) == pytest.approx(CostModel.default(2).predict(mb.pieces), rel=1e-6)
    # A run without its events (tracer.enabled=false) is refused with the key to set, not a bare file error.
    (out / "events.npz").unlink()
    with pytest.raises(ReplayError, match="tracer.enabled=true"):
        replay(out, out_dir=tmp_path / "none", cost_model_path=str(cm))


def test_replay_of_a_directory_without_a_run_names_it(tmp_path):
    with pytest.raises(ReplayError, match="metrics.json"):
        replay(tmp_path)


def test_an_orca_run_recorded_when_every_policy_said_prefill_order_fair_loads_for_replay(tmp_path):
    """Before scheduler.prefill_order defaulted to null, metrics.json said fair under orca too (unread there)."""
    from dataclasses import asdict

    from pp_runtime.sim.replay import load_run_config

    config = asdict(make_config(["scheduler=orca", "pipeline.stages=2"]))
    config["scheduler"]["prefill_order"] = "fair"
    config["scheduler"]["max_chunks_in_flight"] = 2  # set, and ignored, before orca refused it
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config}))
    cfg = load_run_config(tmp_path)
    cfg.validate()
    assert (cfg.scheduler.policy, cfg.scheduler.prefill_order, cfg.scheduler.max_chunks_in_flight) == ("orca", None,
                                                                                                       None)


def test_a_run_recorded_before_the_head_could_be_split_replays_with_the_head_whole(tmp_path):
    from dataclasses import asdict

    from pp_runtime.sim.replay import load_run_config

    config = asdict(make_config(["pipeline.stages=2"]))
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config}))
    assert load_run_config(tmp_path).pipeline.split_lm_head == "auto"  # recorded: kept
    del config["pipeline"]["split_lm_head"]
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config}))
    assert load_run_config(tmp_path).pipeline.split_lm_head is False  # not recorded: that run's head was whole


def test_pp_sim_needs_pipeline_stages(model, tmp_path):
    from launch.sim import simulate_job
    from pp_runtime.config import ConfigError

    cfg = make_config([f"model.path={model}", *WORKLOAD, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="pipeline.stages"):
        simulate_job(cfg)


def test_pp_sim_with_a_roofline_time_model_simulates_gpu_links(model, tmp_path):
    from launch.sim import simulate_job

    cfg = make_config(["pipeline.stages=2", f"model.path={model}", *WORKLOAD, "sim.cost_model=roofline",
                       "sim.gpu=a100", "sim.planner_time_us=10", f"output_dir={tmp_path}"])
    metrics = simulate_job(cfg)
    for name in RUN_FILES:
        assert (tmp_path / name).exists(), name
    assert "nvlink" in metrics["sim"]["links"] and "gloo" not in metrics["sim"]["links"]
    assert not metrics["sim"]["time_model"].startswith("CostModel(")  # the roofline, not a fitted CPU model
    assert metrics["completed"] == 4 and metrics["simulated"] is True
