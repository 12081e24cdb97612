"""Export events as a Chrome trace-event JSON document, which Perfetto (ui.perfetto.dev) and chrome://tracing load.

Each stage is a process; each event kind gets its own thread (track), so a send overlapping a compute does not
break the nesting that the viewers expect within one track. Times are microseconds from the earliest event.
"""

from __future__ import annotations

import json
import math

import numpy as np

from pp_runtime.trace.tracer import EventKind

# Track (tid) per event kind, and the order the tracks are listed in.
_TRACKS = {EventKind.COMPUTE: 0, EventKind.SEND: 1, EventKind.WAIT: 2, EventKind.PLAN: 3}
_X_KEYS = {"name": str, "cat": str, "ph": str}
_METADATA_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index", "process_labels"}


def _event_name(kind: EventKind, mb_id: int, prefill: int, decode: int) -> str:
    if kind == EventKind.COMPUTE:
        return f"mb {mb_id} (p{prefill} d{decode})"
    return kind.name.lower()


def chrome_trace(events: dict[int, np.ndarray], *, stage_names: dict[int, str] | None = None,
                 metadata: dict | None = None) -> dict:
    """Build ``{"traceEvents", "displayTimeUnit", "metadata"}`` from stage -> events (as ``Tracer.events()``)."""
    stage_names = stage_names or {}
    non_empty = [ev for ev in events.values() if len(ev)]
    origin = min(int(ev[:, 1].min()) for ev in non_empty) if non_empty else 0
    trace_events: list[dict] = []
    for stage in sorted(events):
        pid = int(stage)
        trace_events.append(_meta("process_name", pid, 0, name=stage_names.get(stage, f"stage {stage}")))
        trace_events.append(_meta("process_sort_index", pid, 0, sort_index=pid))
        for kind, tid in _TRACKS.items():
            trace_events.append(_meta("thread_name", pid, tid, name=kind.name.lower()))
            trace_events.append(_meta("thread_sort_index", pid, tid, sort_index=tid))
        for kind, start, end, mb_id, prefill, decode in events[stage].tolist():
            kind = EventKind(kind)
            trace_events.append({
                "name": _event_name(kind, mb_id, prefill, decode),
                "cat": kind.name.lower(),
                "ph": "X",
                "ts": (start - origin) / 1e3,
                "dur": (end - start) / 1e3,
                "pid": pid,
                "tid": _TRACKS[kind],
                "args": {"mb_id": mb_id, "prefill_tokens": prefill, "decode_tokens": decode},
            })
    return {"traceEvents": trace_events, "displayTimeUnit": "ms",
            "metadata": {"time_origin_ns": origin, **(metadata or {})}}


def _meta(kind: str, pid: int, tid: int, **args) -> dict:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


def validate_chrome_trace(trace: dict) -> None:
    """Raise ValueError naming the first violation of the trace-event schema that ``chrome_trace`` produces."""
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError("a trace must be a dict with a 'traceEvents' list")
    if trace.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        raise ValueError(f"displayTimeUnit={trace['displayTimeUnit']!r}: use 'ms' or 'ns'")
    if not isinstance(trace.get("metadata", {}), dict):
        raise ValueError("trace 'metadata' must be a dict")
    for i, ev in enumerate(trace["traceEvents"]):
        _validate_event(i, ev)
    try:
        # Viewers parse strict JSON: no NaN, and no numpy scalars (which json cannot write).
        json.dumps(trace, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"trace is not strict JSON: {e}") from None


def _validate_event(i: int, ev: object) -> None:
    if not isinstance(ev, dict):
        raise ValueError(f"traceEvents[{i}] is {type(ev).__name__}, not a dict")
    for key in ("pid", "tid"):
        if not _is_int(ev.get(key)):
            raise ValueError(f"traceEvents[{i}] {key}={ev.get(key)!r} must be an int")
    if not isinstance(ev.get("args", {}), dict):
        raise ValueError(f"traceEvents[{i}] args must be a dict")
    ph = ev.get("ph")
    if ph == "M":
        if ev.get("name") not in _METADATA_NAMES:
            raise ValueError(f"traceEvents[{i}] metadata name={ev.get('name')!r}: use one of {sorted(_METADATA_NAMES)}")
    elif ph == "X":
        for key, typ in _X_KEYS.items():
            if not isinstance(ev.get(key), typ):
                raise ValueError(f"traceEvents[{i}] {key}={ev.get(key)!r} must be a {typ.__name__}")
        for key in ("ts", "dur"):
            value = ev.get(key)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"traceEvents[{i}] {key}={value!r} must be a finite number >= 0 (microseconds)")
    else:
        raise ValueError(f"traceEvents[{i}] ph={ph!r}: only complete ('X') and metadata ('M') events are written")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
