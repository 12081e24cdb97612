import copy
import json

import numpy as np
import pytest

from pp_runtime.trace.export import chrome_trace, validate_chrome_trace
from pp_runtime.trace.tracer import EventKind

C, S, W, P = EventKind.COMPUTE, EventKind.SEND, EventKind.WAIT, EventKind.PLAN


def _events():
    return {
        0: np.array([[P, 1_000, 1_500, -1, 0, 0], [C, 2_000, 12_000, 12, 256, 8], [S, 12_000, 12_400, 12, 0, 0]],
                    dtype=np.int64),
        1: np.array([[W, 1_000, 12_400, -1, 0, 0], [C, 12_500, 20_000, 12, 256, 8]], dtype=np.int64),
    }


def test_generated_trace_is_valid_json_with_expected_events():
    trace = chrome_trace(_events(), stage_names={1: "last stage"}, metadata={"policy": "sarathi"})
    validate_chrome_trace(trace)
    trace = json.loads(json.dumps(trace))
    assert trace["displayTimeUnit"] == "ms" and trace["metadata"]["policy"] == "sarathi"
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == 5
    compute = [e for e in xs if e["cat"] == "compute"]
    assert [e["name"] for e in compute] == ["mb 12 (p256 d8)"] * 2
    assert compute[0]["ts"] == pytest.approx(1.0) and compute[0]["dur"] == pytest.approx(10.0)  # us from origin
    assert compute[0]["args"] == {"mb_id": 12, "prefill_tokens": 256, "decode_tokens": 8}
    assert min(e["ts"] for e in xs) == 0.0
    assert {e["cat"] for e in xs} == {"compute", "send", "wait", "plan"}
    # Different kinds on one stage land on different tracks.
    assert len({e["tid"] for e in xs if e["pid"] == 0}) == 3
    names = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {(0, "stage 0"), (1, "last stage")}


@pytest.mark.parametrize("breakage", [
    lambda t: t.pop("traceEvents"),
    lambda t: t["traceEvents"][-1].__setitem__("ts", -1.0),
    lambda t: t["traceEvents"][-1].__setitem__("dur", "10"),
    lambda t: t["traceEvents"][-1].__setitem__("pid", "0"),
    lambda t: t["traceEvents"][-1].__setitem__("tid", 1.5),
    lambda t: t["traceEvents"][-1].__setitem__("name", None),
    lambda t: t["traceEvents"][-1].__setitem__("ts", float("nan")),
    lambda t: t["traceEvents"][-1].__setitem__("ph", "Q"),
    lambda t: t["traceEvents"][0].__setitem__("name", "bogus_meta"),
    lambda t: t["traceEvents"][-1]["args"].__setitem__("mb_id", np.int64(3)),
])
def test_broken_trace_is_rejected(breakage):
    trace = chrome_trace(_events())
    validate_chrome_trace(trace)
    broken = copy.deepcopy(trace)
    breakage(broken)
    with pytest.raises(ValueError):
        validate_chrome_trace(broken)
