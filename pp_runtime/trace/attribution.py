"""Why each stage idled: its idle time split into fill/drain, imbalance, per-hop latency, rank 0's host work and
the rest.

Same window and idle time as ``pp_runtime.trace.bubbles``: from the first compute start on any stage to the last end on
any stage; a stage is busy in the union of its compute intervals. Its idle time is the fill (window start to its
first compute), the drain (its last compute end to the window end) and the steady gaps between merged compute
runs. Every idle nanosecond gets exactly one label, so the parts sum to the measured idle in integer ns.

The causal rule, for the idle span ``[a, b)`` before stage s starts micro-batch m at ``b`` (a gap, or the fill
with ``a`` = window start), after its previous compute event ``[a - d_prev, a)``:

- **the input of m**: for s > 0, m's compute on stage s-1, over ``[u, r)``. For stage 0, the token return that
  let rank 0 launch m: the last stage's compute of another micro-batch with the latest end ``r <= b`` (its
  sampled tokens came back just then), over ``[u, r)``; for rank 0's half of a split LM head (a second compute
  event of m on stage 0) m's own compute on the last stage. Stage 0 of a 1-stage run depends on itself.
- **hop latency** = ``[max(a, r), b)``: the input existed upstream but this stage had not started m yet:
  transport, (un)pickling the plan, wake-ups, Python between steps. On stage 0 rank 0 also does its own host
  work there; what of it the events show is **host**, not hop: when rank 0 recorded WAIT events (the runtime
  and the simulator do), every ns of the span outside its WAIT and SEND events (folding the returned tokens,
  writing outputs, planning, building inputs, Python), else only its PLAN events. A later stage whose input
  came late because of it keeps that label (host) through the "late" rule below.
- the wait ``[a, min(r, b))``: the stage had nothing to do because upstream was still producing m's input.
  Its last ``min(wait, max(0, (r - u) - d_prev))`` ns are **imbalance**: upstream spent longer on m than this
  stage spent on its previous work. The first ``late`` ns (the remainder) exist because upstream started m late;
  they take the labels of upstream's own timeline over ``[u - late, u)``, as many ns of each as that window holds
  (laid out hop last): upstream's idle there keeps its label (hop, host or imbalance, found earlier since it
  ends earlier), upstream busy on earlier work is imbalance, and anything else (before the window, upstream's own
  fill wait, an unlabelled tie) is **rest**.
- the fill (``a`` = window start, ``d_prev`` = this stage's own time on m) is reported whole as fill/drain, as in
  bubbles.py; inside it, upstream computing m up to ``d_prev`` is the fill proper and the rest keeps its cause
  (hop, imbalance, upstream lateness), laid out last so that a later copy from the fill's end reads its causes.
- no input found: for s > 0 (stage s-1 never computed m) the span is **rest**; for stage 0 before any token
  return the span is hop (rank 0 was not waiting on tokens). An online run's wait for arrivals on stage 0 is
  counted as hop too, or host where it is outside rank 0's WAIT events (the events do not record arrivals).

The reported parts per stage: ``fill_drain`` (exactly bubbles.py's fill + drain), ``imbalance``, ``hop``,
``host`` and ``rest``, summing to ``idle = wall - busy``; ``hop_per_mb_ms`` (``host_per_mb_ms``) is the hop
(host) over the micro-batches the stage computed (``num_microbatches``; the pipeline's: over all stages'
micro-batches), what one hop (rank 0's host work per micro-batch) costs.
Compute-time noise between micro-batches shows up as imbalance (the events cannot tell a slower micro-batch
from a slower core); ``rest`` holds what no upstream work explains.
Beside the parts, ``idle_in_plan/send/wait`` say how much idle overlapped this stage's PLAN, SEND and WAIT events.
"""

from __future__ import annotations

import bisect

import numpy as np

from pp_runtime.trace.bubbles import merge_intervals, pipeline_window, repeat_computes
from pp_runtime.trace.tracer import EventKind

PARTS = ("fill_drain", "imbalance", "hop", "host", "rest")
_IMB, _HOP, _REST, _FILL, _HOST = 1, 2, 3, 4, 5  # internal labels; _FILL: the fill's wait (reported as fill/drain)
_NS = 1e9


class _Timeline:
    """One stage's merged compute runs and its labelled idle segments (found in order of their end)."""

    def __init__(self, ev: np.ndarray, lo: int, hi: int):
        compute = ev[ev[:, 0] == EventKind.COMPUTE]
        self.compute = compute[np.argsort(compute[:, 1], kind="stable")]
        s, e = merge_intervals(np.clip(self.compute[:, 1], lo, hi), np.clip(self.compute[:, 2], lo, hi))
        self.run_starts, self.run_ends = s.tolist(), e.tolist()
        self._busy_before = np.concatenate([[0], np.cumsum(e - s)]).tolist()  # busy ns before each run
        self.segments: list[tuple[int, int, int]] = []  # (start, end, label), sorted by start
        self._seg_starts: list[int] = []
        self._cum = {lab: [0] for lab in (_IMB, _HOP, _REST, _FILL, _HOST)}
        self.by_mb = {}  # mb_id -> (start, end) of its first compute event on this stage
        self.opening = {}  # start -> (mb_id, duration) of the first compute event starting then
        self.longest_ending = {}  # end -> the longest duration of the compute events ending then
        # Starts of a micro-batch's later compute events: rank 0's half of a split LM head.
        self.head_starts = set(self.compute[repeat_computes(self.compute), 1].tolist())
        for _, start, end, mb, _, _ in self.compute.tolist():
            self.by_mb.setdefault(mb, (start, end))
            self.opening.setdefault(start, (mb, end - start))
            self.longest_ending[end] = max(self.longest_ending.get(end, 0), end - start)
        by_end = np.argsort(self.compute[:, 2], kind="stable")
        self.ends_sorted = self.compute[by_end, 2].tolist()  # for "the latest end <= t"
        self.rows_by_end = self.compute[by_end].tolist()

    def label_at(self, x: int, y: int) -> list[tuple[int, int]]:
        """How many ns of each label ``[x, y)`` holds, as (length, label) pieces (hop last): busy time ->
        imbalance, labelled idle -> its label, anything else (before the window, unlabelled) -> rest."""
        busy = self._busy_until(y) - self._busy_until(x)
        found = {lab: self._label_until(y, lab) - self._label_until(x, lab) for lab in (_FILL, _IMB, _HOST, _HOP)}
        rest = (y - x) - busy - sum(found.values())
        return [(found[_FILL], _FILL), (rest, _REST), (busy + found[_IMB], _IMB), (found[_HOST], _HOST),
                (found[_HOP], _HOP)]

    def _busy_until(self, t: int) -> int:
        k = bisect.bisect_right(self.run_starts, t) - 1
        return 0 if k < 0 else self._busy_before[k] + min(t, self.run_ends[k]) - self.run_starts[k]

    def _label_until(self, t: int, label: int) -> int:
        k = bisect.bisect_right(self._seg_starts, t) - 1
        if k < 0:
            return 0
        start, end, lab = self.segments[k]
        return self._cum[label][k] + (min(t, end) - start if lab == label else 0)

    def add(self, start: int, end: int, label: int) -> None:
        """Append a labelled idle segment; a stage's spans are labelled in time order, so this keeps them sorted."""
        if end > start:
            self.segments.append((start, end, label))
            self._seg_starts.append(start)
            for lab, cum in self._cum.items():  # cum[k]: ns of lab in the segments before k
                cum.append(cum[-1] + (end - start if lab == label else 0))


def _input_of(stage: int, mb: int, a: int, b: int, timelines: dict[int, _Timeline], stages: list[int]):
    """(u, r, upstream timeline) of micro-batch ``mb``'s input on ``stage``, or None (see module docstring)."""
    pos = stages.index(stage)
    if pos == 0 and len(stages) > 1 and b in timelines[stage].head_starts:
        # Rank 0's half of a split LM head on mb: its input is mb's own compute on the last stage.
        up = timelines[stages[-1]]
        return (*up.by_mb[mb], up) if mb in up.by_mb else None
    if pos > 0:
        up = timelines[stages[pos - 1]]
        if mb not in up.by_mb:
            return None
        u, r = up.by_mb[mb]
        return u, r, up
    up = timelines[stages[-1]]
    i = bisect.bisect_right(up.ends_sorted, b) - 1
    while i >= 0 and up.rows_by_end[i][3] == mb:
        i -= 1
    if i < 0:  # no tokens had come back yet: rank 0 was not waiting on them, so all of it is hop
        return a, a, up
    return up.rows_by_end[i][1], up.rows_by_end[i][2], up


def _attribute_span(a: int, b: int, d_prev: int, dep, *, fill: bool, host=None) -> list[tuple[int, int, int]]:
    """Labelled pieces (start, end, label) covering ``[a, b)`` exactly. ``host``: rank 0's ``_HostWork`` (stage 0),
    which splits this stage's own hop ``[max(a, r), b)`` into hop and host."""
    if dep is None:
        return [(a, b, _REST)]
    u, r, up = dep
    r_c = min(max(r, a), b)  # end of the wait, inside the span
    wait = r_c - a
    if fill:
        # Waiting while upstream computes m is the fill itself, up to this stage's own time on m; laid out
        # first, so that the fill's end, which later copies read first, holds its causes.
        computing = min(wait, r - u)
        imb = min(computing, max(0, (r - u) - d_prev))
        causes = [p for p in up.label_at(u - (wait - computing), u) if p[1] != _FILL]
        pieces = [(wait - imb - sum(n for n, _ in causes), _FILL), *causes, (imb, _IMB)]
    else:
        imb = min(wait, max(0, (r - u) - d_prev))
        pieces = [*up.label_at(u - (wait - imb), u), (imb, _IMB)]
    spans, t = [], a
    for length, label in pieces:
        spans.append((t, t + length, label))
        t += length
    spans += host.split(r_c, b) if host is not None else [(r_c, b, _HOP)]
    out = []
    for start, end, label in spans:
        if end <= start:
            continue
        if out and out[-1][2] == label:  # coalesce, or copies of copies fragment without bound
            out[-1] = (out[-1][0], end, label)
        else:
            out.append((start, end, label))
    return out


class _HostWork:
    """Where rank 0 was busy with its own host work: outside its WAIT and SEND events when it recorded WAITs
    (its waits for tokens), else inside its PLAN events (events that record nothing else)."""

    def __init__(self, ev: np.ndarray):
        waits = ev[ev[:, 0] == EventKind.WAIT]
        self.outside = len(waits) > 0  # host work is what lies outside the marked intervals
        marked = ev[np.isin(ev[:, 0], (EventKind.WAIT, EventKind.SEND))] if self.outside else \
            ev[ev[:, 0] == EventKind.PLAN]
        s, e = merge_intervals(marked[:, 1], marked[:, 2])
        self.starts, self.ends = s.tolist(), e.tolist()

    def split(self, x: int, y: int) -> list[tuple[int, int, int]]:
        """``[x, y)`` as (start, end, label) pieces in order, each hop or host."""
        inside, outside = (_HOP, _HOST) if self.outside else (_HOST, _HOP)
        out, t = [], x
        k = max(bisect.bisect_right(self.starts, x) - 1, 0)
        while t < y and k < len(self.starts):
            s, e = max(self.starts[k], t), min(self.ends[k], y)
            if e > s:
                out += [(t, s, outside), (s, e, inside)] if s > t else [(s, e, inside)]
                t = e
            elif self.starts[k] >= y:
                break
            k += 1
        if t < y:
            out.append((t, y, outside))
        return out


def attribute_idle(events: dict[int, np.ndarray]) -> dict:
    """Per stage and pipeline: idle ns split into ``PARTS`` (exact integer sums), plus seconds and fractions.

    Returns ``{"stages": {"0": {"idle_ns", "fill_drain_ns", ..., "<part>_s", "<part>_fraction",
    "idle_in_plan_ns", "idle_in_send_ns", "idle_in_wait_ns"}, ...}, "pipeline": {same, summed}}``;
    fractions are of the stage's idle time. Works on real runs and simulated events alike.
    """
    if not events:
        raise ValueError("attribute_idle needs at least one stage's events; got an empty dict")
    stages = sorted(events)
    lo, hi = pipeline_window(events) or (0, 0)
    timelines = {s: _Timeline(np.asarray(events[s], dtype=np.int64).reshape(-1, 6), lo, hi) for s in stages}
    spans = []  # (b, stage order, stage, a, d_prev, mb, is_fill): every idle span ending in a compute start
    for pos, s in enumerate(stages):
        tl = timelines[s]
        for run in range(len(tl.run_starts)):
            a = lo if run == 0 else tl.run_ends[run - 1]
            b = tl.run_starts[run]
            if b <= a:
                continue
            mb, own = tl.opening[b]
            # The fill compares upstream's time on m with this stage's own (equal in a balanced pipeline).
            prev = own if run == 0 else tl.longest_ending.get(a, 0)
            spans.append((b, pos, s, a, prev, mb, run == 0))
    host = _HostWork(np.asarray(events[stages[0]], dtype=np.int64).reshape(-1, 6))
    for b, _, s, a, prev, mb, is_fill in sorted(spans, key=lambda x: (x[0], x[1])):
        dep = _input_of(s, mb, a, b, timelines, stages)
        for start, end, label in _attribute_span(a, b, prev, dep, fill=is_fill, host=host if s == stages[0] else None):
            timelines[s].add(start, end, label)
    out = {"stages": {}}
    total = dict.fromkeys(("idle_ns", *(f"{p}_ns" for p in PARTS), "idle_in_plan_ns", "idle_in_send_ns",
                           "idle_in_wait_ns", "num_microbatches"), 0)
    for s in stages:
        fig = _stage_figures(timelines[s], np.asarray(events[s]).reshape(-1, 6), lo, hi)
        out["stages"][str(s)] = fig
        for k in total:
            total[k] += fig[k]
    out["pipeline"] = _with_fractions(total)
    return out


def _per_micro_batch(fig: dict) -> dict:
    """The hop and the host work in ms per micro-batch the stage(s) computed: what one hop (rank 0's host work
    per micro-batch) costs, whatever the run's length."""
    n = fig["num_microbatches"]
    for part in ("hop", "host"):
        fig[f"{part}_per_mb_ms"] = fig[f"{part}_ns"] / n / 1e6 if n else 0.0
    return fig


def _stage_figures(tl: _Timeline, ev: np.ndarray, lo: int, hi: int) -> dict:
    busy = sum(e - s for s, e in zip(tl.run_starts, tl.run_ends))
    idle = (hi - lo) - busy
    parts = dict.fromkeys(PARTS, 0)
    drain = hi - tl.run_ends[-1] if tl.run_ends else 0
    parts["fill_drain"] += drain
    idle_starts, idle_ends = [], []
    if tl.run_ends and drain:
        idle_starts.append(tl.run_ends[-1])
        idle_ends.append(hi)
    if not tl.run_starts:  # a stage that never computed: all fill, as bubbles.py counts it
        parts["fill_drain"] += idle
        idle_starts, idle_ends = [lo], [hi]
    first = tl.run_starts[0] if tl.run_starts else hi
    for start, end, label in tl.segments:
        idle_starts.append(start)
        idle_ends.append(end)
        if end <= first:  # the fill: all of it is fill/drain, whatever caused it
            parts["fill_drain"] += end - start
        else:
            parts[{_IMB: "imbalance", _HOP: "hop", _HOST: "host", _REST: "rest", _FILL: "rest"}[label]] += end - start
    fig = {"idle_ns": idle, **{f"{p}_ns": v for p, v in parts.items()}, "num_microbatches": len(tl.by_mb)}
    for kind, name in ((EventKind.PLAN, "plan"), (EventKind.SEND, "send"), (EventKind.WAIT, "wait")):
        rows = ev[ev[:, 0] == kind]
        fig[f"idle_in_{name}_ns"] = _overlap_ns(rows[:, 1], rows[:, 2], idle_starts, idle_ends, lo, hi)
    return _with_fractions(fig)


def _overlap_ns(starts, ends, idle_starts: list[int], idle_ends: list[int], lo: int, hi: int) -> int:
    """ns covered by both the union of ``[starts, ends)`` and the (disjoint) idle spans, inside the window."""
    s, e = merge_intervals(np.clip(starts, lo, hi), np.clip(ends, lo, hi))
    if not len(s) or not idle_starts:
        return 0
    order = np.argsort(idle_starts)
    i_s, i_e = np.asarray(idle_starts, np.int64)[order], np.asarray(idle_ends, np.int64)[order]
    before = np.concatenate([[0], np.cumsum(i_e - i_s)])  # idle ns before each idle span

    def idle_until(t: np.ndarray) -> np.ndarray:  # idle ns in [lo, t)
        k = np.searchsorted(i_s, t, side="right") - 1
        inside = np.clip(t - i_s[np.maximum(k, 0)], 0, (i_e - i_s)[np.maximum(k, 0)])
        return np.where(k >= 0, before[np.maximum(k, 0)] + inside, 0)

    return int((idle_until(e) - idle_until(s)).sum())


def _with_fractions(fig: dict) -> dict:
    idle = fig["idle_ns"]
    for p in PARTS:
        fig[f"{p}_s"] = fig[f"{p}_ns"] / _NS
        fig[f"{p}_fraction"] = fig[f"{p}_ns"] / idle if idle else 0.0
    fig["idle_s"] = idle / _NS
    return _per_micro_batch(fig)


def format_attribution_table(attribution: dict) -> str:
    """Aligned text: per stage, idle ms and each part in ms with its share of the idle time."""
    header = ["stage", "idle ms", *(f"{p} ms" for p in PARTS), "hop ms/mb", "host ms/mb", "in plan ms",
              "in send ms", "in wait ms"]
    rows = []
    for stage, f in [*attribution["stages"].items(), ("all", attribution["pipeline"])]:
        rows.append([stage, f"{f['idle_ns'] / 1e6:.3f}",
                     # .get: a bubbles.json written before the host part existed has none
                     *(f"{f.get(f'{p}_ns', 0) / 1e6:.3f} ({f.get(f'{p}_fraction', 0.0):.0%})" for p in PARTS),
                     f"{f.get('hop_per_mb_ms', 0.0):.3f}", f"{f.get('host_per_mb_ms', 0.0):.3f}",
                     *(f"{f[f'idle_in_{k}_ns'] / 1e6:.3f}" for k in ("plan", "send", "wait"))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["idle time by cause (pp_runtime/trace/attribution.py)",
             "  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
