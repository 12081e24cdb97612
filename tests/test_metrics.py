"""Metrics on hand-made sequences whose values can be worked out on paper."""

from __future__ import annotations

import pytest

from pp_runtime.request import Request
from pp_runtime.rundir.metrics import compute_metrics, request_record, slowdown_metrics
from pp_runtime.sequence import Sequence

_STATS = ("mean", "median", "p90", "p99")


def _seq(i, *, arrival, prompt, times, reason, error=None, preemptions=0):
    seq = Sequence(i, Request(f"r{i}", tuple(range(3, 3 + prompt)), arrival_s=arrival))
    seq.output_token_ids = [10 + k for k in range(len(times))]
    seq.token_times_s = list(times)
    seq.first_token_s = times[0] if times else None
    seq.finish_s = times[-1] if times else arrival
    seq.finish_reason, seq.error, seq.num_preemptions = reason, error, preemptions
    return seq


def _job():
    a = _seq(0, arrival=1.0, prompt=4, times=[1.5, 1.7, 2.0], reason="length")
    b = _seq(1, arrival=0.0, prompt=2, times=[0.4], reason="stop")
    c = _seq(2, arrival=0.5, prompt=10, times=[], reason="rejected", error="too big")
    return [a, b, c]


def test_counts_and_throughputs():
    m = compute_metrics(_job(), wall_s=4.0)
    assert (m["num_requests"], m["completed"], m["rejected"]) == (3, 2, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"], m["duration_s"]) == (6, 4, 4.0)
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["output_throughput"] == pytest.approx(1.0)
    assert m["total_token_throughput"] == pytest.approx(2.5)


@pytest.mark.parametrize("name, expected", [
    # ttft: 500 and 400 ms; p90 = 400 + 0.9 * 100 (linear interpolation, as numpy and vLLM)
    ("ttft", (450.0, 450.0, 490.0, 499.0)),
    # tpot: only r0 has > 1 output: (2.0 - 1.5) / 2
    ("tpot", (250.0, 250.0, 250.0, 250.0)),
    # itl: r0's gaps 200 and 300 ms
    ("itl", (250.0, 250.0, 290.0, 299.0)),
    # e2el: 1000 and 400 ms
    ("e2el", (700.0, 700.0, 940.0, 994.0)),
])
def test_latency_stats(name, expected):
    m = compute_metrics(_job(), wall_s=4.0)
    assert tuple(m[f"{s}_{name}_ms"] for s in _STATS) == pytest.approx(expected)


def test_empty_job_gives_zero_throughput_and_none_stats():
    m = compute_metrics([], wall_s=0.0)
    assert (m["num_requests"], m["completed"], m["rejected"], m["total_output_tokens"]) == (0, 0, 0, 0)
    assert m["request_throughput"] == m["output_throughput"] == m["total_token_throughput"] == 0.0
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert all(m[f"{s}_{name}_ms"] is None for s in _STATS)


def test_single_token_outputs_have_no_tpot_or_itl():
    m = compute_metrics([_seq(0, arrival=0.0, prompt=1, times=[0.25], reason="length")], wall_s=1.0)
    assert m["mean_ttft_ms"] == pytest.approx(250.0)
    assert m["mean_tpot_ms"] is None and m["p99_itl_ms"] is None


def test_request_record():
    a, _, c = _job()
    a.num_preemptions = 2
    assert request_record(a, "hey") == {
        "id": "r0", "prompt_tokens": 4, "output_token_ids": [10, 11, 12], "text": "hey", "finish_reason": "length",
        "ttft_s": pytest.approx(0.5), "e2e_s": pytest.approx(1.0), "num_preemptions": 2}
    assert request_record(c, None) == {
        "id": "r2", "prompt_tokens": 10, "output_token_ids": [], "finish_reason": "rejected", "ttft_s": None,
        "e2e_s": pytest.approx(0.0), "num_preemptions": 0, "error": "too big"}


def test_request_record_carries_the_slowdown_that_slowdown_metrics_aggregates():
    a, b, c = _job()
    alone = {"r0": (0.25, 0.5), "r1": (0.1, 0.1), "r2": (1.0, 1.0)}
    alone_times = lambda s: alone[s.request.id]  # noqa: E731
    ra, rb, rc = (request_record(s, None, alone=alone_times) for s in (a, b, c))
    assert ra["slowdown"] == {"ttft": pytest.approx(2.0), "e2e": pytest.approx(2.0)}  # 0.5 / 0.25, 1.0 / 0.5
    assert rb["slowdown"] == {"ttft": pytest.approx(4.0), "e2e": pytest.approx(4.0)}
    assert rc["slowdown"] is None  # rejected: no slowdown, though the run measures it
    agg = slowdown_metrics([a, b], alone_times)
    assert agg["max_ttft"] == pytest.approx(4.0) and agg["median_e2e"] == pytest.approx(3.0)
    assert list(ra) == ["id", "prompt_tokens", "output_token_ids", "finish_reason", "ttft_s", "e2e_s", "slowdown",
                        "num_preemptions"]  # next to the timing fields
    failed = _seq(3, arrival=0.0, prompt=2, times=[0.4], reason="stop", error="stage 1 failed")
    assert request_record(failed, None, alone=lambda s: (1.0, 1.0))["slowdown"] is None  # failed: none either
