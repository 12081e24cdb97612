import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.trace.bubbles import compute_bubbles, format_bubble_table, merge_intervals, repeat_computes
from pp_runtime.trace.tracer import EventKind

C, W, S = EventKind.COMPUTE, EventKind.WAIT, EventKind.SEND
MS = 1_000_000  # ns


def ev(*rows):
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def test_merge_intervals_handles_overlap_nesting_touching_and_order():
    s, e = merge_intervals(np.array([50, 0, 10, 5, 30, 40]), np.array([60, 10, 20, 8, 40, 45]))
    # [0,10) [5,8) [10,20) merge (touching + nested); [30,40) [40,45) touch; [50,60) alone.
    assert s.tolist() == [0, 30, 50] and e.tolist() == [20, 45, 60]


def test_repeat_computes_marks_a_micro_batchs_later_compute_on_a_stage():
    # Stage 0 with a split LM head: mb 0's layers at 0-2 ms, mb 1's at 2-4, then mb 0's head share at 5-6 (0
    # tokens); rows given out of time order. Events without a micro-batch id (-1) are never repeats.
    compute = ev((C, 5 * MS, 6 * MS, 0, 0, 0), (C, 0, 2 * MS, 0, 64, 0), (C, 2 * MS, 4 * MS, 1, 0, 8),
                 (C, 7 * MS, 8 * MS, -1, 0, 0), (C, 9 * MS, 10 * MS, -1, 0, 0))
    assert repeat_computes(compute).tolist() == [True, False, False, False, False]


def test_two_stage_pipeline_exact_figures():
    # Window 0..10 ms. Stage 0 computes 0-2, 3-5, 6-7; stage 1 computes 2-4, 5-6 and 8-10.
    events = {
        0: ev((C, 0, 2 * MS, 0, 100, 0), (C, 3 * MS, 5 * MS, 1, 0, 4), (C, 6 * MS, 7 * MS, 2, 10, 2),
              (S, 2 * MS, 2 * MS + 10, 0, 0, 0)),
        1: ev((C, 2 * MS, 4 * MS, 0, 100, 0), (C, 5 * MS, 6 * MS, 1, 0, 4), (C, 8 * MS, 10 * MS, 2, 10, 2),
              (W, 0, 2 * MS, -1, 0, 0), (W, 4 * MS, 5 * MS, -1, 0, 0)),
    }
    b = compute_bubbles(events)
    s0, s1, p = b["stages"]["0"], b["stages"]["1"], b["pipeline"]
    assert p["wall_s"] == pytest.approx(0.010)
    assert s0["busy_s"] == pytest.approx(0.005) and s0["idle_s"] == pytest.approx(0.005)
    assert s0["fill_s"] == 0 and s0["drain_s"] == pytest.approx(0.003) and s0["steady_s"] == pytest.approx(0.002)
    assert s0["steady_bubble_fraction"] == pytest.approx(2 / 7)
    assert s0["num_bubbles"] == 2 and s0["median_bubble_s"] == pytest.approx(0.001)
    assert s1["busy_s"] == pytest.approx(0.005) and s1["fill_s"] == pytest.approx(0.002)
    assert s1["drain_s"] == 0 and s1["steady_s"] == pytest.approx(0.003)
    assert s1["num_bubbles"] == 2 and s1["median_bubble_s"] == pytest.approx(0.0015)  # gaps 1 ms and 2 ms
    assert s1["wait_s"] == pytest.approx(0.003) and s0["wait_s"] == 0
    assert s1["num_microbatches"] == 3 and s1["prefill_tokens"] == 110 and s1["decode_tokens"] == 6
    assert p["busy_s"] == pytest.approx(0.010) and p["idle_s"] == pytest.approx(0.010)
    assert p["bubble_fraction"] == pytest.approx(0.5)
    assert p["fill_drain_s"] == pytest.approx(0.005)
    assert p["steady_bubble_fraction"] == pytest.approx(5 / 15)  # 5 ms of gaps over 7 + 8 active ms
    assert p["median_bubble_s"] == pytest.approx(0.001)  # all gaps: 1, 1 (stage 0), 1, 2 (stage 1) ms
    assert p["num_bubbles"] == 4


def test_overlapping_and_out_of_order_compute_is_counted_once():
    # Union is [0,4) and [6,9): busy 7, one gap of 2, window 0..10 set by stage 1.
    events = {0: ev((C, 6, 9, 3, 0, 0), (C, 1, 3, 1, 0, 0), (C, 0, 2, 0, 0, 0), (C, 2, 4, 2, 0, 0), (C, 7, 8, 3, 0, 0)),
              1: ev((C, 5, 10, 0, 0, 0))}
    s0 = compute_bubbles(events)["stages"]["0"]
    assert s0["busy_s"] == pytest.approx(7e-9) and s0["idle_s"] == pytest.approx(3e-9)
    assert s0["num_bubbles"] == 1 and s0["steady_s"] == pytest.approx(2e-9) and s0["drain_s"] == pytest.approx(1e-9)
    assert s0["num_microbatches"] == 4 and s0["bubble_fraction"] == pytest.approx(0.3)


def test_stage_without_compute_is_all_fill():
    b = compute_bubbles({0: ev((C, 0, 10, 0, 0, 0)), 1: ev((W, 0, 10, -1, 0, 0))})
    s1 = b["stages"]["1"]
    assert s1["busy_s"] == 0 and s1["bubble_fraction"] == 1.0 and s1["fill_s"] == pytest.approx(1e-8)
    assert s1["steady_bubble_fraction"] == 0.0 and s1["median_bubble_s"] == 0.0
    assert b["pipeline"]["bubble_fraction"] == pytest.approx(0.5)


def test_no_compute_events_gives_zeros():
    b = compute_bubbles({0: ev()})
    assert b["pipeline"]["wall_s"] == 0 and b["pipeline"]["bubble_fraction"] == 0.0


def test_reversed_event_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="ends before it starts"):
        compute_bubbles({0: ev((C, 10, 5, 0, 0, 0))})


def test_format_table_has_a_row_per_stage_and_pipeline():
    b = compute_bubbles({0: ev((C, 0, MS, 0, 1, 0)), 1: ev((C, MS, 2 * MS, 0, 1, 0))})
    text = format_bubble_table(b, title="fcfs")
    lines = text.splitlines()
    assert lines[0] == "fcfs"
    rows = [line.split() for line in lines[4:]]
    assert [r[0] for r in rows] == ["0", "1", "all"]
    assert rows[0][3] == "50.0%" and rows[2][3] == "50.0%"
    assert len({len(line) for line in lines[2:5]}) == 1  # header, rule and stage rows are aligned


intervals = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), min_size=0, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(intervals, min_size=1, max_size=4).filter(lambda stages: any(stages)))
def test_property_busy_plus_idle_is_wall_and_busy_is_the_union(stages):
    events = {i: ev(*[(C, s, s + d, k, 1, 1) for k, (s, d) in enumerate(iv)]) for i, iv in enumerate(stages)}
    b = compute_bubbles(events)
    wall = b["pipeline"]["wall_s"]
    for i, iv in enumerate(stages):
        f = b["stages"][str(i)]
        assert f["busy_s"] + f["idle_s"] == pytest.approx(wall, abs=1e-15)
        assert f["fill_s"] + f["drain_s"] + f["steady_s"] == pytest.approx(f["idle_s"], abs=1e-15)
        assert 0.0 <= f["bubble_fraction"] <= 1.0 and 0.0 <= f["steady_bubble_fraction"] <= 1.0
        covered = set().union(*[range(s, s + d) for s, d in iv]) if iv else set()
        assert round(f["busy_s"] * 1e9) == len(covered)  # unit cells covered == union length
    p = b["pipeline"]
    assert 0.0 <= p["bubble_fraction"] <= 1.0
    assert p["busy_s"] + p["idle_s"] == pytest.approx(len(stages) * wall, abs=1e-15)
