"""Bubble-timeline figures: when each stage computed which micro-batch, and how runs compare.

matplotlib is imported inside the functions (Agg backend) so importing the runtime stays cheap and headless.
Bars are drawn as one PolyCollection per stage and part, so runs with thousands of events stay fast to draw.
"""

from __future__ import annotations

import numpy as np

from pp_runtime.trace.bubbles import pipeline_window, repeat_computes
from pp_runtime.trace.tracer import EventKind

_IDLE_COLOUR = "#e6e6e6"
_HATCH_COLOUR = (0.0, 0.0, 0.0, 0.35)
_ROW_HEIGHT = 0.8


def _bar_vertices(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Rectangles as polygons: ``[n, 4, 2]`` corners (x, y)."""
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                     np.stack([x1, y1], 1), np.stack([x0, y1], 1)], axis=1)


def _mb_colours(mb_ids: np.ndarray) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = cmap(np.mod(mb_ids, cmap.N))  # [n, 4] RGBA
    colours[mb_ids < 0] = (0.5, 0.5, 0.5, 1.0)  # no micro-batch id: grey
    return colours


def draw_timeline(events: dict[int, np.ndarray], path: str, *, title: str) -> None:
    """Draw one row per stage (stage 0 on top) of compute bars coloured by micro-batch, and save a PNG to ``path``.

    Each bar's lower part, proportional to its prefill token share, is solid; the upper, decode part is hatched.
    Stage 0's share of a split LM head (a micro-batch's second compute there, ``repeat_computes``) is pale and
    cross-hatched over the bar's full height. The light background of each row is idle time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch, PathPatch
    from matplotlib.path import Path

    stages = sorted(events)
    window = pipeline_window(events)
    lo, hi = window if window else (0, 0)
    fig, ax = plt.subplots(figsize=(14, 1.2 + 0.7 * len(stages)))
    any_head = False
    for row, stage in enumerate(stages):
        y = len(stages) - 1 - row  # stage 0 on top
        base = y - _ROW_HEIGHT / 2
        ax.broken_barh([(0, (hi - lo) / 1e6)], (base, _ROW_HEIGHT), facecolors=_IDLE_COLOUR)
        ev = events[stage]
        ev = ev[ev[:, 0] == EventKind.COMPUTE]
        if not len(ev):
            continue
        x0, x1 = (ev[:, 1] - lo) / 1e6, (ev[:, 2] - lo) / 1e6  # ms from window start
        tokens = ev[:, 4] + ev[:, 5]
        head = repeat_computes(ev)
        # Events without token counts draw as all-prefill (solid) bars; a split head's share as none (see below).
        prefill_share = np.where(head, 0.0, np.where(tokens > 0, ev[:, 4] / np.maximum(tokens, 1), 1.0))
        split = base + _ROW_HEIGHT * prefill_share
        colours = _mb_colours(ev[:, 3])
        bottom = np.full(len(ev), base)
        top = np.full(len(ev), base + _ROW_HEIGHT)
        ax.add_collection(PolyCollection(_bar_vertices(x0, x1, bottom, split), facecolors=colours,
                                         edgecolors="none"))
        light = colours.copy()
        light[:, :3] = 0.45 * light[:, :3] + 0.55  # paler tint of the same colour under the hatching
        decode = _bar_vertices(x0, x1, split, top)
        ax.add_collection(PolyCollection(decode, facecolors=light, edgecolors="none"))
        # One hatched compound path per row and kind: Agg hatches per path drawn, so per-bar hatching takes seconds.
        for polys, hatch in ((decode[~head], "////"), (decode[head], "xxxx")):
            if len(polys):
                any_head = any_head or hatch == "xxxx"
                ax.add_patch(PathPatch(Path.make_compound_path_from_polys(polys), facecolor="none",
                                       edgecolor=_HATCH_COLOUR, linewidth=0.0, hatch=hatch))
    ax.set_xlim(0, max((hi - lo) / 1e6, 1e-3))
    ax.set_ylim(-0.6, len(stages) - 0.4)
    ax.set_yticks(range(len(stages)), [f"stage {s}" for s in reversed(stages)])
    ax.set_xlabel("time since the first micro-batch entered (ms)")
    ax.set_title(title)
    handles = [Patch(facecolor="#4c72b0", label="prefill tokens"),
               Patch(facecolor="#b8c7e0", edgecolor=_HATCH_COLOUR, hatch="////", label="decode tokens"),
               Patch(facecolor=_IDLE_COLOUR, label="idle (bubble)")]
    if any_head:
        handles.insert(2, Patch(facecolor="#b8c7e0", edgecolor=_HATCH_COLOUR, hatch="xxxx",
                                label="stage 0's share of the split LM head"))
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    # Keep the bottom ~0.35 inch free for the legend whatever the number of stages.
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_comparison(rows: list[dict], path: str) -> None:
    """Compare runs side by side and save a PNG: bubble fraction per stage per run, and tokens/s per run.

    Each row is ``{"run": str, "policy": str, "tokens_per_s": float | None, "bubbles": compute_bubbles(...)}``,
    optionally with ``"slowdown"`` (metrics.json's): each run's label then also gives Jain's index over its TTFT
    slowdown and the median TTFT slowdown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['run']}\n({r['policy']}){_fairness_label(r.get('slowdown'))}" for r in rows]
    num_stages = max(len(r["bubbles"]["stages"]) for r in rows)
    # The runs' full labels go in one legend under both plots (a run's colour is the same in both), however many.
    ncol = min(len(rows), 4)
    legend_rows = -(-len(rows) // ncol)
    legend_in = 0.25 + 0.75 * legend_rows  # inches: up to five lines a label
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5 + legend_in), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        stages = r["bubbles"]["stages"]
        fractions = [stages[str(s)]["bubble_fraction"] if str(s) in stages else 0.0 for s in range(num_stages)]
        left.bar(np.arange(num_stages) + (i - (len(rows) - 1) / 2) * width, fractions, width, label=labels[i])
    left.set_xticks(range(num_stages), [f"stage {s}" for s in range(num_stages)])
    left.set_ylabel("bubble fraction (idle / wall)")
    left.set_ylim(0, 1)
    left.set_title("bubble fraction per stage")
    throughput = [r["tokens_per_s"] or 0.0 for r in rows]
    bars = right.bar(range(len(rows)), throughput, color=[f"C{i}" for i in range(len(rows))])
    right.bar_label(bars, [f"{t:.1f}" if r["tokens_per_s"] is not None else "n/a" for t, r in zip(throughput, rows)])
    right.set_xticks(range(len(rows)), [r["run"] for r in rows], fontsize="small", rotation=30, ha="right")
    right.set_ylabel("output tokens / s")
    right.set_title("throughput")
    handles, _ = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fairness_label(slowdown: dict | None) -> str:
    if not slowdown or slowdown.get("jain_ttft") is None:
        return ""
    return f"\nTTFT slowdown {slowdown['median_ttft']:.2f} (p50)\nJain {slowdown['jain_ttft']:.3f}"
