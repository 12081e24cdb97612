"""Does the simulator predict this machine? Real 2- and 3-stage runs, each replayed by ``pp-sim --replay``.

    python scripts/validate_sim.py [--stages 2,3] [--workloads trace,prefill] [--policies sarathi,orca]
                                   [--num-requests 16] [--length-scale 0.1] [--modes cost_model,measured]

For every (stages, workload, policy): run the job under torchrun, then replay the run directory
(``pp_runtime.sim.replay.replay``) with the cost model the run fitted at start-up ("cost_model"; orca, which fits
none, gets the sarathi run's of the same stages and workload) and, with ``measured``, with the run's own measured
compute durations (which isolates the pipeline, planner and link modelling from the cost model). Prints measured
vs predicted throughput, per-stage busy time and idle fraction, p50/p99 TBT with relative errors, the idle time
by cause (pp_runtime/trace/attribution.py) of both, and a summary against the issue's targets: throughput and busy
time within 5%, idle fraction within 3 points. Workloads as in scripts/bench_policies.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pp_runtime.trace.attribution import PARTS  # noqa: E402
from scripts.bench_policies import workloads  # noqa: E402
from scripts.jobs import machine, run_torchrun  # noqa: E402


def _attribution_line(bubbles: dict) -> str:
    p = bubbles["attribution"]["pipeline"]
    wall = bubbles["pipeline"]["wall_s"] * bubbles["pipeline"]["num_stages"]
    return ", ".join(f"{part} {p.get(f'{part}_s', 0.0) / wall:.1%}" for part in PARTS)


def _verdict(rows: list[dict]) -> tuple[str, bool]:
    """A one-line summary of the errors and whether all meet the targets (5%, 5%, 3 points)."""
    by = {r["figure"]: r for r in rows}
    thr = by["output_throughput"]["rel_error"]
    busy = [r["rel_error"] for k, r in by.items() if k.startswith("busy_s") and r["rel_error"] is not None]
    idle = [r["error_points"] for k, r in by.items() if k.startswith("idle_fraction")]
    tbt = [by[k]["rel_error"] for k in ("p50_tbt_ms", "p99_tbt_ms")]
    ok = thr is not None and abs(thr) <= 0.05 and all(abs(b) <= 0.05 for b in busy) and all(abs(i) <= 3 for i in idle)
    text = (f"throughput {_pct(thr)}, busy {' / '.join(map(_pct, busy))}, idle "
            f"{' / '.join(f'{i:+.1f} pt' for i in idle)}, TBT p50 {_pct(tbt[0])} p99 {_pct(tbt[1])}")
    return text, ok


def _pct(v) -> str:
    return "-" if v is None else f"{v:+.1%}"


def main(argv: list[str] | None = None) -> int:
    from pp_runtime.sim.compare import format_comparison
    from pp_runtime.sim.replay import replay

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--workloads", default="trace,prefill")
    ap.add_argument("--policies", default="sarathi,orca")
    ap.add_argument("--modes", default="cost_model,measured")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--length-scale", type=float, default=0.1)
    ap.add_argument("--token-budget", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every real run")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="validate_sim_"))
    print(f"machine: {machine()}; {args.num_requests} requests per run, scheduler.token_budget={args.token_budget}")
    summary = []
    for stages in map(int, args.stages.split(",")):
        for name in args.workloads.split(","):
            cost_model = None
            for policy in args.policies.split(","):
                run_dir = out / f"{stages}st" / name / policy
                run_torchrun(stages, [*workloads(args)[name], f"scheduler={policy}",
                                      f"scheduler.token_budget={args.token_budget}", *args.extra], run_dir)
                if (run_dir / "cost_model.json").exists():
                    cost_model = cost_model or str(run_dir / "cost_model.json")
                measured = json.loads((run_dir / "bubbles.json").read_text())
                label = f"{stages} stages, {name}, {policy}"
                print(f"\n### {label}\n\nmeasured idle by cause: {_attribution_line(measured)}")
                for mode in args.modes.split(","):
                    if mode == "cost_model" and cost_model is None:
                        print(f"({mode}: no cost_model.json from a sarathi run of this stage count and workload)")
                        continue
                    rep_dir = run_dir / f"replay_{mode}"
                    _, rows = replay(run_dir, out_dir=rep_dir, measured_times=mode == "measured",
                                     cost_model_path=None if mode == "measured" else cost_model)
                    print(format_comparison(rows, title=f"\n{label}: measured vs replayed ({mode})"))
                    replayed = json.loads((rep_dir / "bubbles.json").read_text())
                    print(f"replayed idle by cause: {_attribution_line(replayed)}")
                    summary.append((label, mode, *_verdict(rows)))
    print("\n| run | replay time model | errors (predicted vs measured) | within targets |\n|---|---|---|---|")
    for label, mode, text, ok in summary:
        print(f"| {label} | {mode} | {text} | {'yes' if ok else 'no'} |")
    print(f"\nruns in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
