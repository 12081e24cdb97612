"""cost_model_error in metrics.json: the cost model's predicted stage times against the measured ones."""

from __future__ import annotations

import numpy as np
import pytest

from pp_runtime.planner import CostModel
from pp_runtime.planner.cost_model import prediction_error
from pp_runtime.request import Request, SamplingParams
from pp_runtime.sim import simulate
from pp_runtime.trace.tracer import EventKind
from tests.jobs import make_config


def test_prediction_error_is_relative_to_the_measured_compute_time():
    model = CostModel((1e-3, 2e-3), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))  # 1 ms on stage 0, 2 ms on stage 1
    ms = 1_000_000

    def rows(durations_ns):
        return np.array([(EventKind.COMPUTE, 10 * ms * i, 10 * ms * i + d, i, 4, 0) for i, d in enumerate(durations_ns)]
                        + [(EventKind.SEND, 0, 5, 0, 0, 0)], dtype=np.int64)

    events = {0: rows([ms, 2 * ms, ms // 2]), 1: rows([2 * ms, 4 * ms, 2 * ms])}
    err = prediction_error(model, {0: (4, 0, 0), 1: (4, 0, 0), 2: (4, 0, 0)}, events)
    # |1-1|/1, |1-2|/2, |1-0.5|/0.5 on stage 0; 0, 0.5, 0 on stage 1.
    assert err["num_samples"] == 6
    assert err["median"] == pytest.approx(0.25) and err["p90"] == pytest.approx(np.percentile([0, .5, 1, 0, .5, 0], 90))
    assert prediction_error(model, {}, events)["median"] is None


def test_the_simulator_reports_the_planners_error_against_the_simulated_hardware():
    model = CostModel((1e-3,) * 2, (1e-5,) * 2, (1e-8,) * 2, (5e-8,) * 2)
    cfg = make_config(["pipeline.stages=2", "scheduler=sarathi", "sim.planner_time_us=0"])
    reqs = [Request(f"r{i}", (5,) * (50 + 40 * i), SamplingParams(max_tokens=3)) for i in range(6)]
    res = simulate(cfg, reqs, time_model=model, hidden_size=8, dtype_bytes=2, max_model_len=4096, num_blocks=10_000)
    err = res.metrics["cost_model_error"]
    assert err["num_samples"] == 2 * len(res.micro_batches)
    assert err["median"] == pytest.approx(0.0, abs=1e-6) and err["p90"] == pytest.approx(0.0, abs=1e-6)
