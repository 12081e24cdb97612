"""``pp-report RUN_DIR [RUN_DIR ...] [--out DIR]``: regenerate a run's bubble reports and compare runs.

For each run directory, rebuilds trace.json, bubbles.json and timeline.png from events.npz. With two or more,
also writes comparison.md and comparison.png into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

import numpy as np
import yaml

from pp_runtime.trace.reports import EVENTS_FILE, load_clock_errors, load_events, write_reports


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (2 when a run directory is missing or unreadable)."""
    parser = argparse.ArgumentParser(prog="pp-report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory holding events.npz")
    parser.add_argument("--out", default=".", help="where comparison.md/png go (default: current directory)")
    args = parser.parse_args(argv)

    # Read every directory before writing anything, so a typo in the last one does not leave half the reports.
    loaded = []
    for run_dir in args.run_dirs:
        try:
            loaded.append((run_dir, *_load(run_dir)))
        except _BadRunDir as e:
            print(f"pp-report: {e}", file=sys.stderr)
            return 2
    rows = []
    for run_dir, events, errors in loaded:
        policy = _policy(run_dir)
        bubbles = write_reports(run_dir, events, policy=policy, clock_errors_ns=errors, save_events=False)
        print(f"{run_dir}: {policy}, bubble fraction {bubbles['pipeline']['bubble_fraction']:.1%}")
        rows.append({"run": _run_name(run_dir), "policy": policy, "tokens_per_s": _tokens_per_s(run_dir),
                     "bubbles": bubbles})
    if len(rows) >= 2:
        from pp_runtime.trace.timeline import draw_comparison

        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "comparison.md"), "w") as f:
            f.write(comparison_markdown(rows))
        draw_comparison(rows, os.path.join(args.out, "comparison.png"))
        print(f"wrote {os.path.join(args.out, 'comparison.md')} and comparison.png")
    return 0


def comparison_markdown(rows: list[dict]) -> str:
    """A markdown table, one line per run: policy, tokens/s, bubble fraction per stage and pipeline, median bubble."""
    num_stages = max(len(r["bubbles"]["stages"]) for r in rows)
    header = ["run", "policy", "tokens/s", *(f"bubble s{s}" for s in range(num_stages)), "bubble pipeline",
              "median bubble ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stages, pipeline = r["bubbles"]["stages"], r["bubbles"]["pipeline"]
        cells = [r["run"], r["policy"], "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"]
        cells += [f"{stages[str(s)]['bubble_fraction']:.1%}" if str(s) in stages else "" for s in range(num_stages)]
        cells += [f"{pipeline['bubble_fraction']:.1%}", f"{pipeline['median_bubble_s'] * 1e3:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _BadRunDir(Exception):
    """A run directory that cannot be reported on; the message names it and says why."""


def _load(run_dir: str) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    if not os.path.isdir(run_dir):
        raise _BadRunDir(f"run dir {run_dir!r} does not exist or is not a directory")
    if not os.path.isfile(os.path.join(run_dir, EVENTS_FILE)):
        raise _BadRunDir(f"run dir {run_dir!r} has no {EVENTS_FILE}: pass a directory written by a traced job")
    try:
        events, errors = load_events(run_dir), load_clock_errors(run_dir)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise _BadRunDir(f"run dir {run_dir!r}: cannot read {EVENTS_FILE} ({e}); rerun the job to rewrite it") from e
    if not events:
        raise _BadRunDir(f"run dir {run_dir!r}: {EVENTS_FILE} holds no stage arrays (stage0, stage1, ...)")
    for stage, ev in events.items():
        if ev.ndim != 2 or ev.shape[1] != 6:
            raise _BadRunDir(f"run dir {run_dir!r}: stage{stage} has shape {ev.shape}, expected [n, 6]")
        if (ev[:, 2] < ev[:, 1]).any():
            raise _BadRunDir(f"run dir {run_dir!r}: stage{stage} has events that end before they start")
    return events, errors


def _run_name(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(run_dir)))


def _policy(run_dir: str) -> str:
    """The batching policy: from bubbles.json, else the Hydra config's scheduler.policy, else 'unknown'."""
    try:
        with open(os.path.join(run_dir, "bubbles.json")) as f:
            policy = json.load(f).get("policy")
        if isinstance(policy, str) and policy:
            return policy
    except (OSError, ValueError, AttributeError):
        pass
    for name in ("config.yaml", os.path.join(".hydra", "config.yaml")):
        try:
            with open(os.path.join(run_dir, name)) as f:
                policy = (yaml.safe_load(f) or {}).get("scheduler", {}).get("policy")
            if isinstance(policy, str) and policy:
                return policy
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return "unknown"


def _tokens_per_s(run_dir: str) -> float | None:
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    for key in ("output_throughput", "tokens_per_s"):
        value = metrics.get(key) if isinstance(metrics, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
