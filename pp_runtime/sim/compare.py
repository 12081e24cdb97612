"""Measured vs predicted: the figures a simulation is judged on, side by side with relative errors.

``run_summary`` reduces a run's metrics.json and bubbles.json (real or simulated) to throughput, per-stage busy
time and idle fraction, and p50/p99 time between tokens; ``compare_runs`` pairs two summaries; ``format_comparison``
prints the pairs. scripts/validate_sim.py and ``pp-sim --replay`` both use them.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_summary(metrics: dict, bubbles: dict) -> dict:
    """Throughput (output tokens/s), busy seconds and idle fraction per stage, p50/p99 TBT (ms) of one run."""
    out = {"output_throughput": metrics.get("output_throughput"),
           "p50_tbt_ms": metrics.get("median_itl_ms"), "p99_tbt_ms": metrics.get("p99_itl_ms"),
           "duration_s": metrics.get("duration_s")}
    for s, b in sorted(bubbles["stages"].items(), key=lambda kv: int(kv[0])):
        out[f"busy_s[{s}]"] = b["busy_s"]
        out[f"idle_fraction[{s}]"] = b["bubble_fraction"]
    return out


def load_summary(run_dir: str | Path) -> dict:
    """``run_summary`` of a run directory (its metrics.json and bubbles.json)."""
    run = Path(run_dir)
    return run_summary(json.loads((run / "metrics.json").read_text()), json.loads((run / "bubbles.json").read_text()))


def compare_runs(measured: dict, predicted: dict) -> list[dict]:
    """One row per figure of ``measured``: measured, predicted, relative error ((pred - meas) / meas; None where
    either is missing or the measurement is 0) and, for fractions, the error in points (pred - meas)."""
    rows = []
    for key, m in measured.items():
        p = predicted.get(key)
        rel = (p - m) / m if m and p is not None else None
        row = {"figure": key, "measured": m, "predicted": p, "rel_error": rel}
        if key.startswith("idle_fraction") and m is not None and p is not None:
            row["error_points"] = 100 * (p - m)
        rows.append(row)
    return rows


def format_comparison(rows: list[dict], *, title: str = "measured vs predicted") -> str:
    """A fixed-width table of ``compare_runs`` rows."""
    lines = [title, f"{'figure':<20} {'measured':>12} {'predicted':>12} {'error':>10}"]
    for r in rows:
        if "error_points" in r:
            err = f"{r['error_points']:+.1f} pt"
        else:
            err = "" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        lines.append(f"{r['figure']:<20} {_num(r['measured']):>12} {_num(r['predicted']):>12} {err:>10}")
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"
