import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.trace.attribution import PARTS, attribute_idle, format_attribution_table
from pp_runtime.trace.bubbles import compute_bubbles
from pp_runtime.trace.reports import format_bubble_report
from pp_runtime.trace.tracer import EventKind

C = 1_000_000  # ns: one micro-batch on one stage


def pipeline_events(durations, *, hop=0, depth=None, stage0_delay=0):
    """A pipeline's compute events: ``durations[s][m]`` ns; each hop (and the token return to stage 0) takes
    ``hop``; rank 0 spends ``stage0_delay`` before each micro-batch it launches after a return."""
    n, count = len(durations), len(durations[0])
    depth = depth or n
    free, ends = [0] * n, [[0] * count for _ in range(n)]
    rows = {s: [] for s in range(n)}
    for m in range(count):
        for s in range(n):
            ready = (0 if m < depth else ends[-1][m - depth] + hop + stage0_delay) if s == 0 else ends[s - 1][m] + hop
            start = max(free[s], ready)
            ends[s][m] = free[s] = start + durations[s][m]
            rows[s].append((EventKind.COMPUTE, start, free[s], m, 0, 0))
    return {s: np.array(r, dtype=np.int64) for s, r in rows.items()}


def steady_ns(events, stage):
    return round(compute_bubbles(events)["stages"][str(stage)]["steady_s"] * 1e9)


def assert_sums(attribution, events):
    bubbles = compute_bubbles(events)
    for s, f in attribution["stages"].items():
        assert sum(f[f"{p}_ns"] for p in PARTS) == f["idle_ns"]
        assert all(f[f"{p}_ns"] >= 0 for p in PARTS)
        assert f["idle_ns"] == pytest.approx(bubbles["stages"][s]["idle_s"] * 1e9, abs=1)
        fill_drain = bubbles["stages"][s]["fill_s"] + bubbles["stages"][s]["drain_s"]
        assert f["fill_drain_ns"] == pytest.approx(fill_drain * 1e9, abs=1)
    p = attribution["pipeline"]
    assert sum(p[f"{part}_ns"] for part in PARTS) == p["idle_ns"]


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_injected_hop_latency_is_all_hop(stages):
    events = pipeline_events([[C] * 8] * stages, hop=C // 20)
    a = attribute_idle(events)
    assert_sums(a, events)
    for s in range(stages):
        f = a["stages"][str(s)]
        assert steady_ns(events, s) > 0
        assert f["hop_ns"] == steady_ns(events, s)
        assert f["imbalance_ns"] == f["rest_ns"] == 0


@pytest.mark.parametrize("stages", [2, 3])
def test_planning_delay_on_rank_0_is_hop(stages):
    delay = C // 7
    events = pipeline_events([[C] * 8] * stages, stage0_delay=delay)
    a = attribute_idle(events)
    assert_sums(a, events)
    gaps = compute_bubbles(events)["stages"]["0"]["num_bubbles"]
    assert a["stages"]["0"]["hop_ns"] == delay * gaps > 0
    for f in a["stages"].values():
        assert f["imbalance_ns"] == f["rest_ns"] == 0


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_one_slow_microbatch_is_imbalance_downstream(stages):
    extra = 3 * C // 10
    durations = [[C] * 8 for _ in range(stages)]
    durations[0][3] += extra
    events = pipeline_events(durations)
    a = attribute_idle(events)
    assert_sums(a, events)
    assert a["stages"]["0"]["idle_ns"] == a["stages"]["0"]["fill_drain_ns"]
    for s in range(1, stages):  # each later stage waits exactly the extra time, once
        f = a["stages"][str(s)]
        assert f["imbalance_ns"] == extra == steady_ns(events, s)
        assert f["hop_ns"] == f["rest_ns"] == 0


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_slow_stage_is_never_idle_and_others_idle_by_imbalance(stages):
    extra = C // 10
    durations = [[C] * 8 for _ in range(stages)]
    durations[1] = [C + extra] * 8
    events = pipeline_events(durations)
    a = attribute_idle(events)
    assert_sums(a, events)
    assert steady_ns(events, 1) == 0 and a["stages"]["1"]["idle_ns"] == a["stages"]["1"]["fill_drain_ns"]
    for s in set(range(stages)) - {1}:
        f = a["stages"][str(s)]
        assert f["imbalance_ns"] == steady_ns(events, s) > 0
        assert f["hop_ns"] == f["rest_ns"] == 0


def test_hop_is_the_time_between_upstream_end_and_start():
    # Stage 1 starts micro-batch 0 70 ns after stage 0 ended it (fill) and micro-batch 1 30 ns after; its gap
    # 230..280 is a 20 ns wait on stage 0 (150 ns on micro-batch 1 > stage 1's 60 on 0: imbalance) then the hop.
    events = {0: np.array([(0, 0, 100, 0, 0, 0), (0, 100, 250, 1, 0, 0)], dtype=np.int64),
              1: np.array([(0, 170, 230, 0, 0, 0), (0, 280, 310, 1, 0, 0)], dtype=np.int64)}
    a = attribute_idle(events)
    s1 = a["stages"]["1"]
    assert s1["fill_drain_ns"] == 170 and s1["hop_ns"] == 30 and s1["imbalance_ns"] == 20 and s1["rest_ns"] == 0
    assert_sums(a, events)


def test_missing_upstream_microbatch_is_rest_and_plan_overlap_is_reported():
    events = {0: np.array([(0, 0, 100, 0, 0, 0), (EventKind.PLAN, 100, 130, 1, 0, 0), (0, 130, 200, 1, 0, 0)],
                          dtype=np.int64),
              1: np.array([(0, 100, 150, 0, 0, 0), (0, 180, 260, 9, 0, 0)], dtype=np.int64)}
    a = attribute_idle(events)
    assert a["stages"]["1"]["rest_ns"] == 30  # micro-batch 9 never ran on stage 0
    # Stage 0 launched micro-batch 1 before any tokens came back: its planning gap is rank 0's host work.
    assert a["stages"]["0"]["idle_in_plan_ns"] == 30 and a["stages"]["0"]["host_ns"] == 30
    assert a["stages"]["0"]["hop_ns"] == 0
    assert_sums(a, events)


def test_rank_0_host_work_after_the_token_wait_is_host_and_its_transport_is_hop():
    """Stage 0's gap before micro-batch 2: the tokens of 0 exist at 250 (stage 1's end); rank 0 waits for them
    until 260 (hop), folds them 260-270 (no event: host), plans 270-280 (host), sends the plan 280-285 (hop),
    and starts computing at 290 (host). Stage 1 then waits for micro-batch 2, which started late by those same
    40 ns: their labels carry over, plus its own 5 ns hop. (Stage 0's other 10 ns of hop: sending micro-batch 0
    before any token came back, and the 5 ns its gap 205-250 waited on stage 1's late start, stage 1's hop.)"""
    W, S, P = EventKind.WAIT, EventKind.SEND, EventKind.PLAN
    events = {0: np.array([(0, 0, 100, 0, 0, 0), (S, 100, 105, 0, 0, 0), (0, 105, 205, 1, 0, 0),
                           (S, 205, 210, 1, 0, 0), (W, 210, 260, 0, 0, 0), (P, 270, 280, 2, 0, 0),
                           (S, 280, 285, 2, 0, 0), (0, 290, 390, 2, 0, 0)], dtype=np.int64),
              1: np.array([(0, 110, 250, 0, 0, 0), (0, 250, 350, 1, 0, 0), (0, 395, 495, 2, 0, 0)],
                          dtype=np.int64)}
    a = attribute_idle(events)
    assert_sums(a, events)
    s0, s1 = a["stages"]["0"], a["stages"]["1"]
    assert (s0["imbalance_ns"], s0["hop_ns"], s0["host_ns"], s0["rest_ns"]) == (40, 25, 25, 0)
    assert (s1["imbalance_ns"], s1["hop_ns"], s1["host_ns"], s1["rest_ns"]) == (0, 20, 25, 0)
    assert s0["host_per_mb_ms"] == pytest.approx(25 / 3 / 1e6)
    assert "host ms/mb" in format_attribution_table(a)


def test_without_wait_events_only_rank_0_plan_events_are_host():
    """Events that record no waits (hand-made ones) cannot tell a slow hop from host work: only PLAN is host."""
    events = {0: np.array([(0, 0, 10, 0, 0, 0), (EventKind.PLAN, 10, 13, 1, 0, 0), (0, 15, 30, 1, 0, 0)],
                          dtype=np.int64)}
    a = attribute_idle(events)
    assert a["stages"]["0"]["host_ns"] == 3 and a["stages"]["0"]["hop_ns"] == 2


def test_one_stage_gaps_are_hop():
    events = {0: np.array([(0, 0, 10, 0, 0, 0), (0, 15, 30, 1, 0, 0), (0, 32, 40, 2, 0, 0)], dtype=np.int64)}
    a = attribute_idle(events)
    assert a["stages"]["0"]["hop_ns"] == 7 and a["stages"]["0"]["idle_ns"] == 7


def _stream(draw, stages):
    events = {}
    for s in range(stages):
        n = draw(st.integers(0, 12))
        rows = []
        for _ in range(n):
            start = draw(st.integers(0, 10_000))
            rows.append((draw(st.sampled_from(list(EventKind))), start, start + draw(st.integers(0, 2_000)),
                         draw(st.integers(-1, 8)), 0, 0))
        events[s] = np.array(rows, dtype=np.int64).reshape(-1, 6)
    return events


@st.composite
def streams(draw):
    return _stream(draw, draw(st.integers(1, 4)))


@settings(max_examples=300, deadline=None)
@given(streams())
def test_parts_sum_to_measured_idle_on_random_streams(events):
    a = attribute_idle(events)
    assert_sums(a, events)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(1, 8), st.integers(0, 300), st.data())
def test_parts_sum_on_random_pipelines(stages, count, hop, data):
    durations = [[data.draw(st.integers(0, 2_000)) for _ in range(count)] for _ in range(stages)]
    events = pipeline_events(durations, hop=hop, depth=data.draw(st.integers(1, stages + 1)))
    assert_sums(attribute_idle(events), events)


def test_table_is_printed_with_the_bubble_table():
    events = pipeline_events([[C] * 4] * 2, hop=C // 10)
    bubbles = compute_bubbles(events)
    bubbles["attribution"] = attribute_idle(events)
    text = format_bubble_report(bubbles)
    assert format_attribution_table(bubbles["attribution"]) in text and "hop ms" in text


def test_real_two_stage_run_writes_an_attribution_that_sums(tmp_path_factory, tmp_path):
    from pp_runtime.trace.reports import load_events
    from tests.jobs import run_job_ranks
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)
    run_job_ranks(2, [f"model.path={model}", "workload=synthetic", "workload.num_requests=6",
                      "workload.prefill_len=12", "cache.num_blocks=64", f"output_dir={tmp_path}",
                      "tracer.timeline=false", "scheduler=fcfs", "scheduler.token_budget=16",
                      "scheduler.chunk_size=8", "cache.block_size=4"])
    written = json.loads((tmp_path / "bubbles.json").read_text())["attribution"]
    events = load_events(str(tmp_path))
    assert written == json.loads(json.dumps(attribute_idle(events)))
    assert set(written["stages"]) == {"0", "1"}
    assert_sums(written, events)
    assert written["pipeline"]["idle_ns"] > 0


def _simulated(times_s, *, latency_s=0.0, stages=3, depth=3, requests=12, max_tokens=3):
    """Events of pp_runtime.sim on constant per-stage times (the simulator's format is the tracer's)."""
    from pp_runtime.request import Request, SamplingParams
    from pp_runtime.sim import LinkModel, simulate
    from tests.jobs import make_config
    from tests.test_sim import ConstantTimes

    cfg = make_config([f"pipeline.stages={stages}", f"pipeline.num_microbatches={depth}", "scheduler=fcfs",
                       "scheduler.token_budget=8", "scheduler.chunk_size=8", "sim.planner_time_us=0"])
    reqs = [Request(f"r{i}", (5,) * 8, SamplingParams(max_tokens=max_tokens)) for i in range(requests)]
    return simulate(cfg, reqs, time_model=ConstantTimes(times_s), links=LinkModel.uniform(stages, latency_s=latency_s),
                    hidden_size=4, dtype_bytes=4, max_model_len=256, num_blocks=1024).events


def test_simulated_slow_stage_idles_others_by_imbalance_only():
    events = _simulated([0.002, 0.004, 0.002])
    a = attribute_idle(events)
    assert_sums(a, events)
    assert steady_ns(events, 1) == 0
    for s in ("0", "2"):
        assert a["stages"][s]["imbalance_ns"] == steady_ns(events, int(s)) > 0
        assert a["stages"][s]["hop_ns"] == a["stages"][s]["rest_ns"] == 0


def test_simulated_link_latency_is_hop():
    events = _simulated([0.002] * 3, latency_s=0.0003)
    a = attribute_idle(events)
    assert_sums(a, events)
    for s in range(3):  # equal stages: every steady gap is the links' latency
        f = a["stages"][str(s)]
        assert f["hop_ns"] == steady_ns(events, s) > 0
        assert f["imbalance_ns"] == f["rest_ns"] == 0


@pytest.mark.parametrize("stages", [2, 3])
def test_hop_per_micro_batch_is_each_stage_hop_over_the_micro_batches_it_computed(stages):
    hop = C // 10
    events = pipeline_events([[C] * 8] * stages, hop=hop)
    a = attribute_idle(events)
    for s in range(stages):
        f = a["stages"][str(s)]
        assert f["num_microbatches"] == 8 and f["hop_ns"] == steady_ns(events, s) > 0
        assert f["hop_per_mb_ms"] == pytest.approx(f["hop_ns"] / 8 / 1e6)
    p = a["pipeline"]
    assert p["num_microbatches"] == 8 * stages
    assert p["hop_per_mb_ms"] == pytest.approx(p["hop_ns"] / (8 * stages) / 1e6)
    assert "hop ms/mb" in format_attribution_table(a)


def test_rank_0_waiting_for_its_half_of_a_split_head_is_the_last_stage_s_imbalance():
    # Stage 0 computes each micro-batch's layers (C) and later, once the last stage (2C) is done with it, its half
    # of the LM head (h): a second compute event of the same micro-batch, whose input is that micro-batch's own
    # compute on the last stage, not an earlier token return.
    h = C // 10
    rows0 = [(EventKind.COMPUTE, 0, C, 0, 5, 0), (EventKind.COMPUTE, C, 2 * C, 1, 5, 0),
             (EventKind.COMPUTE, 3 * C, 3 * C + h, 0, 0, 0), (EventKind.COMPUTE, 3 * C + h, 4 * C + h, 2, 0, 1),
             (EventKind.COMPUTE, 5 * C, 5 * C + h, 1, 0, 0), (EventKind.COMPUTE, 7 * C, 7 * C + h, 2, 0, 0)]
    rows1 = [(EventKind.COMPUTE, C, 3 * C, 0, 5, 0), (EventKind.COMPUTE, 3 * C, 5 * C, 1, 5, 0),
             (EventKind.COMPUTE, 5 * C, 7 * C, 2, 0, 1)]
    events = {0: np.array(rows0, dtype=np.int64), 1: np.array(rows1, dtype=np.int64)}
    a = attribute_idle(events)
    assert_sums(a, events)
    s0 = a["stages"]["0"]
    # Idle [2C, 3C), [4C + h, 5C) and [5C + h, 7C): each while the last stage computed the micro-batch whose head
    # half comes next, longer than stage 0's own work before it.
    assert s0["imbalance_ns"] == s0["idle_ns"] == C + (C - h) + (2 * C - h)
