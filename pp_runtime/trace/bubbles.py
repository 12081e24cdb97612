"""Pipeline bubbles, computed exactly from the stages' compute events.

The window runs from the first compute start on any stage (the first micro-batch entering the pipeline) to the
last compute end on any stage (the last one leaving). Within it a stage is busy during the union of its compute
intervals and idle otherwise; idle time splits into fill (before the stage's first compute), drain (after its
last) and steady-state bubbles (the gaps between). All arithmetic is on integer ns, so per stage
``busy + idle == wall`` exactly; seconds appear only in the returned dict.
"""

from __future__ import annotations

import numpy as np

from pp_runtime.trace.tracer import EventKind

_NS = 1e9


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of ``[start, end)`` intervals in any order, as sorted disjoint intervals (touching ones merged)."""
    if len(starts) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    # An interval opens a new merged run iff it starts after everything before it has ended.
    reach = np.maximum.accumulate(e)
    opens = np.ones(len(s), dtype=bool)
    opens[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(opens)
    last = np.append(first[1:] - 1, len(s) - 1)
    return s[first], reach[last]


def _clipped_union_ns(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> int:
    s, e = merge_intervals(np.clip(starts, lo, hi), np.clip(ends, lo, hi))
    return int((e - s).sum())


def _check(stage: int, ev: np.ndarray) -> None:
    if ev.ndim != 2 or ev.shape[1] != 6:
        raise ValueError(f"stage {stage} events have shape {ev.shape}; expected [n, 6] as Tracer.events() returns")
    bad = np.flatnonzero(ev[:, 2] < ev[:, 1])
    if len(bad):
        raise ValueError(f"stage {stage} event row {bad[0]} ends before it starts ({ev[bad[0]].tolist()}); "
                         "record(kind, start_ns, end_ns, ...) takes the start first")


def _stage(ev: np.ndarray, lo: int, hi: int) -> tuple[dict, list[int], int, int]:
    """One stage's figures; its gaps, active span (first compute start to last end) and busy time in ns."""
    compute = ev[ev[:, 0] == EventKind.COMPUTE]
    wall = hi - lo
    s, e = merge_intervals(np.clip(compute[:, 1], lo, hi), np.clip(compute[:, 2], lo, hi))
    busy = int((e - s).sum())
    if len(s):
        fill, drain = int(s[0]) - lo, hi - int(e[-1])
        gaps = (s[1:] - e[:-1]).tolist()
    else:
        fill, drain, gaps = wall, 0, []
    steady = sum(gaps)
    active = wall - fill - drain
    waits = ev[ev[:, 0] == EventKind.WAIT]
    mbs = compute[:, 3]
    figures = {
        "busy_s": busy / _NS,
        "idle_s": (wall - busy) / _NS,
        "bubble_fraction": (wall - busy) / wall if wall else 0.0,
        "fill_s": fill / _NS,
        "drain_s": drain / _NS,
        "steady_s": steady / _NS,
        "steady_bubble_fraction": steady / active if active else 0.0,
        "median_bubble_s": float(np.median(gaps)) / _NS if gaps else 0.0,
        "num_bubbles": len(gaps),
        "wait_s": _clipped_union_ns(waits[:, 1], waits[:, 2], lo, hi) / _NS,
        "num_microbatches": int(len(np.unique(mbs[mbs >= 0]))),
        "num_compute_events": int(len(compute)),
        "prefill_tokens": int(compute[:, 4].sum()),
        "decode_tokens": int(compute[:, 5].sum()),
    }
    return figures, gaps, active, busy


def repeat_computes(compute: np.ndarray) -> np.ndarray:
    """``[n]`` bool over a stage's compute events (rows of ``Tracer.events()``): True for each one that is not its
    micro-batch's first on that stage, i.e. stage 0's share of a vocabulary-parallel LM head
    (``pipeline.split_lm_head``), which it computes when the micro-batch's last stage has answered."""
    order = np.argsort(compute[:, 1], kind="stable")
    seen: set[int] = set()
    repeat = np.zeros(len(compute), dtype=bool)
    for i in order.tolist():
        mb = int(compute[i, 3])
        repeat[i] = mb >= 0 and mb in seen
        seen.add(mb)
    return repeat


def pipeline_window(events: dict[int, np.ndarray]) -> tuple[int, int] | None:
    """``(first compute start, last compute end)`` in ns over all stages, or None without compute events."""
    starts, ends = [], []
    for ev in events.values():
        compute = ev[ev[:, 0] == EventKind.COMPUTE]
        if len(compute):
            starts.append(int(compute[:, 1].min()))
            ends.append(int(compute[:, 2].max()))
    return (min(starts), max(ends)) if starts else None


def compute_bubbles(events: dict[int, np.ndarray]) -> dict:
    """Bubble figures per stage and for the whole pipeline, from stage -> events (on one clock).

    Returns ``{"stages": {"0": {...}, ...}, "pipeline": {...}}`` with plain floats and ints (JSON-ready).
    Without any compute event the window is empty and every figure is 0.
    """
    if not events:
        raise ValueError("compute_bubbles needs at least one stage's events; got an empty dict")
    for stage, ev in events.items():
        _check(stage, ev)
    lo, hi = pipeline_window(events) or (0, 0)
    wall = hi - lo
    stages, all_gaps, steady, active, busy = {}, [], 0, 0, 0
    for stage in sorted(events):
        figures, gaps, stage_active, stage_busy = _stage(events[stage], lo, hi)
        stages[str(stage)] = figures
        all_gaps += gaps
        steady += sum(gaps)
        active += stage_active
        busy += stage_busy
    n = len(stages)
    idle = n * wall - busy
    pipeline = {
        "num_stages": n,
        "wall_s": wall / _NS,
        "busy_s": busy / _NS,
        "idle_s": idle / _NS,
        "bubble_fraction": idle / (n * wall) if wall else 0.0,
        "steady_bubble_fraction": steady / active if active else 0.0,
        "fill_drain_s": (idle - steady) / _NS,
        "median_bubble_s": float(np.median(all_gaps)) / _NS if all_gaps else 0.0,
        "num_bubbles": len(all_gaps),
    }
    return {"stages": stages, "pipeline": pipeline}


def format_bubble_table(bubbles: dict, *, title: str = "") -> str:
    """An aligned plain-text table of ``compute_bubbles`` output: one row per stage, then the pipeline."""
    header = ["stage", "busy ms", "idle ms", "bubble", "fill ms", "drain ms", "steady", "median gap ms",
              "gaps", "wait ms", "mbs", "prefill", "decode"]
    rows = []
    for stage, f in bubbles["stages"].items():
        rows.append([stage, _ms(f["busy_s"]), _ms(f["idle_s"]), f"{f['bubble_fraction']:.1%}", _ms(f["fill_s"]),
                     _ms(f["drain_s"]), f"{f['steady_bubble_fraction']:.1%}", _ms(f["median_bubble_s"]),
                     str(f["num_bubbles"]), _ms(f["wait_s"]), str(f["num_microbatches"]),
                     str(f["prefill_tokens"]), str(f["decode_tokens"])])
    p = bubbles["pipeline"]
    fill = sum(f["fill_s"] for f in bubbles["stages"].values())
    drain = sum(f["drain_s"] for f in bubbles["stages"].values())
    rows.append(["all", _ms(p["busy_s"]), _ms(p["idle_s"]), f"{p['bubble_fraction']:.1%}",
                 _ms(fill), _ms(drain), f"{p['steady_bubble_fraction']:.1%}", _ms(p["median_bubble_s"]),
                 str(p["num_bubbles"]), "", "", "", ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append(f"window {_ms(p['wall_s'])} ms, {p['num_stages']} stages")
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"
