"""``pp-report RUN_DIR [RUN_DIR ...] [--out DIR]``: regenerate a run's bubble reports and compare runs.

For each run directory, rebuilds trace.json, bubbles.json and timeline.png from events.npz, and prints the run's
label (policy, with the prefill order under sarathi and throttle: ``sarathi/fair``), its bubble fraction and, when
its metrics.json has ``slowdown``, the fairness line (TTFT / e2e slowdown vs alone, Jain's index). With two or
more, also writes comparison.md and comparison.png into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

import numpy as np
import yaml

from pp_runtime.config import ORDERED_POLICIES
from pp_runtime.trace.reports import EVENTS_FILE, format_slowdown, load_clock_errors, load_events, write_reports


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
        metrics = _metrics(run_dir)
        label = _label(run_dir, policy, metrics)
        slowdown = metrics.get("slowdown") if isinstance(metrics.get("slowdown"), dict) else None
        print(f"{run_dir}: {label}, bubble fraction {bubbles['pipeline']['bubble_fraction']:.1%}")
        if slowdown is not None:
            print(f"  {format_slowdown(slowdown)}")
        rows.append({"run": _run_name(run_dir), "policy": label, "tokens_per_s": _tokens_per_s(metrics),
                     "bubbles": bubbles, "slowdown": slowdown})
    if len(rows) >= 2:
        from pp_runtime.trace.timeline import draw_comparison

        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "comparison.md"), "w") as f:
            f.write(comparison_markdown(rows))
        draw_comparison(rows, os.path.join(args.out, "comparison.png"))
        print(f"wrote {os.path.join(args.out, 'comparison.md')} and comparison.png")
    return 0


def comparison_markdown(rows: list[dict]) -> str:
    """A markdown table, one line per run: label (policy/prefill order), tokens/s, bubble fraction per stage and
    pipeline, median bubble, and TTFT / e2e slowdown median and Jain's index (blank without ``slowdown``)."""
    num_stages = max(len(r["bubbles"]["stages"]) for r in rows)
    header = ["run", "policy", "tokens/s", *(f"bubble s{s}" for s in range(num_stages)), "bubble pipeline",
              "median bubble ms", *(label for label, _, _ in _SLOWDOWN_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stages, pipeline = r["bubbles"]["stages"], r["bubbles"]["pipeline"]
        cells = [r["run"], r["policy"], "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"]
        cells += [f"{stages[str(s)]['bubble_fraction']:.1%}" if str(s) in stages else "" for s in range(num_stages)]
        cells += [f"{pipeline['bubble_fraction']:.1%}", f"{pipeline['median_bubble_s'] * 1e3:.3f}"]
        slowdown = r.get("slowdown") or {}
        cells += ["" if slowdown.get(key) is None else f"{slowdown[key]:.{digits}f}"
                  for _, key, digits in _SLOWDOWN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# comparison.md's fairness columns: header, metrics.json "slowdown" key, decimals (as pp-sweep's summary names them)
_SLOWDOWN_COLUMNS = (("TTFT slowdown p50", "median_ttft", 2), ("Jain TTFT", "jain_ttft", 3),
                     ("e2e slowdown p50", "median_e2e", 2), ("Jain e2e", "jain_e2e", 3))


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


def _label(run_dir: str, policy: str, metrics: dict) -> str:
    """``policy``, and under sarathi / throttle its prefill order as resolved (``sarathi/fcfs``): from metrics.json's
    config, else the Hydra config (where null means fair, as ``SchedulerConfig.validate`` resolves it)."""
    if policy not in ORDERED_POLICIES:
        return policy
    scheduler = (metrics.get("config") or {}).get("scheduler") if isinstance(metrics.get("config"), dict) else None
    if not isinstance(scheduler, dict):
        try:
            with open(os.path.join(run_dir, ".hydra", "config.yaml")) as f:
                scheduler = (yaml.safe_load(f) or {}).get("scheduler")
        except (OSError, yaml.YAMLError, AttributeError):
            scheduler = None
    if not isinstance(scheduler, dict):
        return policy  # no config to read the order from
    return f"{policy}/{scheduler.get('prefill_order') or 'fair'}"


def _metrics(run_dir: str) -> dict:
    """The run's metrics.json, or {} when it has none (a run that died before writing it) or it is unreadable."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _tokens_per_s(metrics: dict) -> float | None:
    for key in ("output_throughput", "tokens_per_s"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
