import logging

import numpy as np

from pp_runtime.trace.tracer import EventKind, Tracer


def test_records_and_sorts_by_start():
    t = Tracer(0, capacity=8)
    t.record(EventKind.SEND, 300, 350, mb_id=2)
    t.record(EventKind.COMPUTE, 100, 250, mb_id=1, prefill=64, decode=3)
    t.record(EventKind.WAIT, 200, 260)
    ev = t.events()
    assert ev.dtype == np.int64 and ev.shape == (3, 6)
    assert ev.tolist() == [[EventKind.COMPUTE, 100, 250, 1, 64, 3],
                           [EventKind.WAIT, 200, 260, -1, 0, 0],
                           [EventKind.SEND, 300, 350, 2, 0, 0]]
    assert t.dropped == 0


def test_events_is_a_copy():
    t = Tracer(0, capacity=4)
    t.record(EventKind.COMPUTE, 1, 2)
    t.events()[0, 1] = 99
    assert t.events()[0, 1] == 1


def test_overflow_is_counted_and_warned_once(caplog):
    t = Tracer(3, capacity=2)
    with caplog.at_level(logging.WARNING, logger="pp_runtime.trace.tracer"):
        for i in range(5):
            t.record(EventKind.COMPUTE, i * 10, i * 10 + 5, mb_id=i)
    assert t.dropped == 3
    assert t.events()[:, 3].tolist() == [0, 1]
    warnings = [r for r in caplog.records if "tracer is full" in r.getMessage()]
    assert len(warnings) == 1 and "stage 3" in warnings[0].getMessage()


def test_disabled_tracer_records_nothing():
    t = Tracer(0, enabled=False)
    t.record(EventKind.COMPUTE, 1, 2)
    with t.span(EventKind.COMPUTE, mb_id=1):
        pass
    assert t.events().shape == (0, 6)
    assert t.dropped == 0


def test_clock_offset_applies_to_timestamps_only():
    t = Tracer(1, capacity=4)
    t.record(EventKind.COMPUTE, 1_000, 2_000, mb_id=7, prefill=5, decode=6)
    t.set_clock_offset(-300, 40)
    assert t.events().tolist() == [[EventKind.COMPUTE, 700, 1_700, 7, 5, 6]]
    assert (t.clock_offset_ns, t.clock_error_ns) == (-300, 40)


def test_span_records_enter_and_exit():
    t = Tracer(0, capacity=4)
    before = t.now_ns()
    with t.span(EventKind.COMPUTE, mb_id=4, prefill=10, decode=2):
        inside = t.now_ns()
    after = t.now_ns()
    (row,) = t.events().tolist()
    kind, start, end, mb, prefill, decode = row
    assert (kind, mb, prefill, decode) == (EventKind.COMPUTE, 4, 10, 2)
    assert before <= start <= inside <= end <= after


def test_span_records_even_when_the_block_raises():
    t = Tracer(0, capacity=4)
    try:
        with t.span(EventKind.WAIT):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert t.events()[:, 0].tolist() == [EventKind.WAIT]
