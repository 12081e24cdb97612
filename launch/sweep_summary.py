"""The sweep summary: one row per job in summary.csv and summary.md, and summary.png (bubbles and throughput)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

HF_JOB = "hf_baseline"


@dataclass(frozen=True)
class Job:
    name: str  # directory under the sweep dir, "<index>_<slug>"
    swept: dict[str, str]  # swept key -> this job's value, as written on the command line
    overrides: tuple[str, ...]  # every override of the job, fixed ones included


@dataclass
class JobResult:
    job: Job
    status: str  # ok, failed or timeout
    seconds: float = 0.0
    error: str | None = None  # tail of the failing rank's stderr (or why the job did not start)
    metrics: dict | None = None
    skipped: bool = False  # done by an earlier run of the sweep into the same directory



def write_summary(out: Path, axes: list[str], results: list[JobResult]) -> str:
    """Write summary.csv, summary.md and summary.png into ``out``; returns the markdown table."""
    header = ["job", *axes, "status", *(m[1] for m in _METRICS)]
    rows = [[r.job.name, *(r.job.swept.get(a, "") for a in axes), r.status,
             *(_fmt(_metric(r, key), digits) for _, _, key, digits in _METRICS)] for r in results]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *axes, "status", *(m[0] for m in _METRICS), "seconds", "error"])
        for r in results:
            writer.writerow([r.job.name, *(r.job.swept.get(a, "") for a in axes), r.status,
                             *("" if _metric(r, key) is None else _metric(r, key) for _, _, key, _ in _METRICS),
                             f"{r.seconds:.1f}", r.error or ""])
    table = _markdown_table(header, rows)
    text = (f"# Sweep summary\n\nTTFT and TBT (inter-token latency) percentiles in ms; bubble = pipeline bubble "
            f"fraction; TTFT slowdown = TTFT / TTFT alone (cost model), Jain = Jain's fairness index over it; "
            f"blank = not measured.\n\n{table}\n")
    for r in (r for r in results if r.status != "ok"):
        text += f"\n## {r.job.name}: {r.status}\n\n`{' '.join(r.job.overrides)}`\n\n```\n{r.error or ''}\n```\n"
    (out / "summary.md").write_text(text)
    _plot(out / "summary.png", axes, results)
    return table


# (summary.csv column, summary.md header, metrics.json key, decimals shown)
_METRICS = (
    ("token_budget", "budget", "token_budget.value", 0),
    ("output_throughput", "tokens/s", "output_throughput", 1),
    ("ttft_p50_ms", "TTFT p50", "median_ttft_ms", 1),
    ("ttft_p99_ms", "TTFT p99", "p99_ttft_ms", 1),
    ("tbt_p50_ms", "TBT p50", "median_itl_ms", 2),
    ("tbt_p99_ms", "TBT p99", "p99_itl_ms", 2),
    ("pipeline_bubble_fraction", "bubble", "pipeline_bubble_fraction", 3),
    ("slowdown_ttft_p50", "TTFT slowdown p50", "slowdown.median_ttft", 2),
    ("jain_ttft", "Jain TTFT", "slowdown.jain_ttft", 3),
)


def _metric(result: JobResult, key: str) -> float | None:
    """A number from the job's metrics.json (``a.b``: key b of dict a); None when missing, null (an empty
    statistic) or not finite."""
    value = result.metrics or {}
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header, *([c.replace("|", "\\|") for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _plot(path: Path, axes: list[str], results: list[JobResult]) -> None:
    """Bubble fraction and throughput per job, bars grouped by the first swept key's values."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    jobs = [r for r in results if r.job.name != HF_JOB]
    x_key, rest = (axes[0], axes[1:]) if axes else (None, [])
    x_of = (lambda r: r.job.swept[x_key]) if x_key else (lambda r: r.job.name)
    categories = list(dict.fromkeys(map(x_of, jobs)))
    groups = list(dict.fromkeys(tuple(r.job.swept[k] for k in rest) for r in jobs))
    width = 0.8 / max(len(groups), 1)
    fig = Figure(figsize=(max(6.0, 1.0 + 0.5 * len(jobs)), 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(2, 1, sharex=True)
    for ax, key, title in zip(panels, ("pipeline_bubble_fraction", "output_throughput"),
                              ("pipeline bubble fraction", "output throughput (tokens/s)")):
        for g, group in enumerate(groups):
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(rest, group)) or None
            members = {x_of(r): r for r in jobs if tuple(r.job.swept[k] for k in rest) == group}
            xs = [c + (g - (len(groups) - 1) / 2) * width for c in range(len(categories))]
            values = [_metric(members[c], key) if c in members else None for c in categories]
            ax.bar(xs, [math.nan if v is None else v for v in values], width, label=label)
            for x, c, v in zip(xs, categories, values):
                if c in members and members[c].status != "ok":
                    ax.text(x, 0, members[c].status, rotation=90, ha="center", va="bottom", fontsize=8, color="red")
        baseline = next((r for r in results if r.job.name == HF_JOB), None)
        if baseline is not None and _metric(baseline, key) is not None:
            ax.axhline(_metric(baseline, key), color="gray", linestyle="--", label="hf-generate")
        ax.set_title(title)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    panels[-1].set_xticks(range(len(categories)), categories)
    panels[-1].set_xlabel(x_key or "job")
    fig.savefig(path, dpi=100)
