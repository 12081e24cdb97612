"""The bubble reports of one run directory, written by rank 0 at the end of a job and by ``pp-report``.

A run directory holds ``events.npz`` (the raw events: arrays ``stage0``, ``stage1``, ... and ``clock_error_ns``,
rows of (stage, error)), from which everything else is derived: ``trace.json`` (Chrome/Perfetto trace),
``bubbles.json`` (``compute_bubbles`` plus the policy, each stage's clock error and, under ``"attribution"``, the
idle time by cause from ``pp_runtime.trace.attribution``) and ``timeline.png``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from pp_runtime.trace.attribution import attribute_idle, format_attribution_table
from pp_runtime.trace.bubbles import compute_bubbles, format_bubble_table
from pp_runtime.trace.export import chrome_trace, validate_chrome_trace

EVENTS_FILE = "events.npz"


def write_reports(run_dir: str, events: dict[int, np.ndarray], *, policy: str, clock_errors_ns: dict[int, int],
                  timeline: bool = True, save_events: bool = True) -> dict:
    """Write events.npz (if ``save_events``; pp-report, which reads it, does not rewrite it), trace.json,
    bubbles.json and (if ``timeline``) timeline.png into ``run_dir``.

    Returns the bubbles dict as written to bubbles.json.
    """
    os.makedirs(run_dir, exist_ok=True)
    errors = {int(s): int(clock_errors_ns.get(s, 0)) for s in events}
    arrays = {f"stage{int(s)}": np.asarray(ev, dtype=np.int64).reshape(-1, 6) for s, ev in events.items()}
    error_rows = np.array(sorted(errors.items()), dtype=np.int64).reshape(-1, 2)  # [stages, 2]: stage, error
    if save_events:
        np.savez(os.path.join(run_dir, EVENTS_FILE), clock_error_ns=error_rows, **arrays)

    trace = chrome_trace(events, metadata={"policy": policy, "clock_error_ns": {str(s): e for s, e in errors.items()}})
    validate_chrome_trace(trace)
    write_json(os.path.join(run_dir, "trace.json"), trace, indent=None)

    bubbles = compute_bubbles(events)
    for stage, figures in bubbles["stages"].items():
        figures["clock_error_ns"] = errors[int(stage)]
    bubbles["policy"] = policy
    bubbles["attribution"] = attribute_idle(events)
    write_json(os.path.join(run_dir, "bubbles.json"), bubbles, indent=2)

    if timeline:
        from pp_runtime.trace.timeline import draw_timeline

        title = f"{policy}: bubble fraction {bubbles['pipeline']['bubble_fraction']:.1%} ({len(events)} stages)"
        draw_timeline(events, os.path.join(run_dir, "timeline.png"), title=title)
    return bubbles


def format_bubble_report(bubbles: dict, *, title: str | None = None, slowdown: dict | None = None) -> str:
    """The bubble table of ``compute_bubbles`` output, with the idle-by-cause table under it when ``bubbles``
    holds an ``"attribution"`` (as ``write_reports`` stores it), and a fairness line when ``slowdown`` (metrics.json's
    ``"slowdown"``) is given."""
    text = format_bubble_table(bubbles, title=title)
    if "attribution" in bubbles:
        text += "\n" + format_attribution_table(bubbles["attribution"])
    if slowdown and slowdown.get("num_requests"):
        text += "\n" + format_slowdown(slowdown)
    return text


def format_slowdown(slowdown: dict) -> str:
    """One line of metrics.json's ``"slowdown"`` (``rundir.metrics.slowdown_metrics``): TTFT and e2e slowdown vs
    alone (median, p90, max) and Jain's index over each; ``no slowdown measured`` when it counts no request."""
    s = slowdown
    if not s.get("num_requests"):
        return "slowdown vs alone: no slowdown measured (no completed request)"
    return (f"slowdown vs alone, {s['num_requests']} requests: TTFT median {s['median_ttft']:.2f} "
            f"p90 {s['p90_ttft']:.2f} max {s['max_ttft']:.2f}; e2e median {s['median_e2e']:.2f} "
            f"p90 {s['p90_e2e']:.2f} max {s['max_e2e']:.2f}; Jain's index TTFT {s['jain_ttft']:.3f} "
            f"e2e {s['jain_e2e']:.3f}")


def bubble_metrics(bubbles: dict) -> dict:
    """The bubble figures metrics.json carries (per-stage and steady fractions, the pipeline's), from bubbles.json."""
    stages = bubbles["stages"].items()
    return {"bubble_fraction": {s: b["bubble_fraction"] for s, b in stages},
            "steady_bubble_fraction": {s: b["steady_bubble_fraction"] for s, b in stages},
            "pipeline_bubble_fraction": bubbles["pipeline"]["bubble_fraction"]}


def load_events(run_dir: str) -> dict[int, np.ndarray]:
    """Read stage -> events back from ``run_dir/events.npz``."""
    with np.load(os.path.join(run_dir, EVENTS_FILE)) as data:
        return {int(k.removeprefix("stage")): data[k] for k in data.files if k.startswith("stage")}


def load_clock_errors(run_dir: str) -> dict[int, int]:
    """Read stage -> clock-offset error (ns) back from ``run_dir/events.npz`` (empty if it was not saved)."""
    with np.load(os.path.join(run_dir, EVENTS_FILE)) as data:
        if "clock_error_ns" not in data.files:
            return {}
        return {int(s): int(e) for s, e in data["clock_error_ns"].reshape(-1, 2)}


def write_json(path, obj: dict, *, indent: int | None = 2, default=None) -> None:
    """Write JSON then rename, so a reader never sees half a file if the job dies mid-write."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=default)
    os.replace(tmp, path)
