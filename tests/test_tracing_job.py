"""The tracer on a real 2-stage run: figures add up to wall time, and an injected delay shows up as idle time."""

from __future__ import annotations

import json

import pytest

from pp_runtime.trace.export import validate_chrome_trace
from tests.jobs import run_job_ranks
from tests.tiny_models import make_tiny_model

DELAY_MS = 40.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


def _run(model, out, delay_ms):
    run_job_ranks(2, [f"model.path={model}", "workload=synthetic", "workload.num_requests=4",
                      "workload.prefill_len=12", "workload.pd_ratio=2", "workload.seed=3", "scheduler=fcfs",
                      "scheduler.token_budget=16", "cache.num_blocks=64", "cache.block_size=4",
                      f"debug.stage_delay_ms={delay_ms}", "debug.delay_stage=1", f"output_dir={out}"])
    return json.loads((out / "bubbles.json").read_text())


def test_delay_on_stage_1_raises_stage_0_idle_time(model, tmp_path):
    base = _run(model, tmp_path / "base", 0.0)
    slow = _run(model, tmp_path / "slow", DELAY_MS)
    for b in (base, slow):
        for s in b["stages"].values():  # busy + idle = wall, per stage
            assert s["busy_s"] + s["idle_s"] == pytest.approx(b["pipeline"]["wall_s"], abs=1e-6)
    n_mb = slow["stages"]["1"]["num_microbatches"]
    added_s = n_mb * DELAY_MS / 1000
    # Every stage-1 step sleeps DELAY_MS inside its compute span.
    assert slow["stages"]["1"]["busy_s"] >= added_s
    # Stage 0 cannot run ahead by more than the in-flight depth, so it waits for (almost) every delay.
    # Tolerance: a quarter of the added time either way, for scheduling noise on a loaded machine.
    extra_idle = slow["stages"]["0"]["idle_s"] - base["stages"]["0"]["idle_s"]
    assert 0.75 * added_s <= extra_idle <= 1.25 * added_s + 0.05, (extra_idle, added_s)


def test_trace_json_is_a_valid_chrome_trace(model, tmp_path):
    _run(model, tmp_path, 0.0)
    trace = json.loads((tmp_path / "trace.json").read_text())
    validate_chrome_trace(trace)
    cats = {e["cat"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"compute", "send", "wait", "plan"} <= cats
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    png = (tmp_path / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
