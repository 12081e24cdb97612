"""Where the pipeline's idle time goes: repeated runs, each stage's idle split by cause
(pp_runtime/trace/attribution.py).

    python scripts/bench_attribution.py [--stages 2] [--workloads prefill,trace] [--policies sarathi,orca]
                                        [--repeats 2] [--num-requests 32] [extra Hydra overrides ...]

For each workload and policy, runs the job ``--repeats`` times under torchrun and prints per run: total tokens/s,
the pipeline's bubble (mean stage idle over the whole run) and steady bubble, per-stage steady bubble, and the
idle by cause (fill/drain, imbalance, hop, rank 0's host work, rest) as a share of the window, plus the mean hop
latency per gap and per micro-batch and the host work per micro-batch; then the spread over the repeats. Workloads as
in bench_policies.py (``--workloads long``: issue 14's long-prompt sample on a random Llama 384 x 8).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_policies import workloads  # noqa: E402
from scripts.jobs import machine, run_torchrun  # noqa: E402


def _row(m: dict, b: dict) -> dict:
    wall_ns = b["pipeline"]["wall_s"] * 1e9
    att = b["attribution"]
    out = {"tok/s": m["total_token_throughput"], "pipeline bubble": b["pipeline"]["bubble_fraction"],
           "pipeline steady": b["pipeline"]["steady_bubble_fraction"]}
    for s, f in att["stages"].items():
        gaps = max(b["stages"][s]["num_bubbles"], 1)
        out[f"s{s} steady"] = b["stages"][s]["steady_bubble_fraction"]
        for part in ("imbalance", "hop", "host", "rest"):
            out[f"s{s} {part}"] = f[f"{part}_ns"] / wall_ns
        out[f"s{s} hop ms/gap"] = f["hop_ns"] / gaps / 1e6
        out[f"s{s} hop ms/mb"] = f["hop_ns"] / max(b["stages"][s]["num_microbatches"], 1) / 1e6
        out[f"s{s} host ms/mb"] = f.get("host_ns", 0) / max(b["stages"][s]["num_microbatches"], 1) / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--workloads", default="prefill,trace")
    ap.add_argument("--policies", default="sarathi,orca")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=0.1)
    ap.add_argument("--token-budget", type=lambda v: v if v == "auto" else int(v), default=128,
                    help="scheduler.token_budget: a number, or auto (the cost model's knee)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_attribution_"))
    print(f"machine: {machine()}; {args.stages} stages; scheduler.token_budget={args.token_budget}; "
          f"{args.repeats} repeats; fractions are of the window (wall)")
    for name in args.workloads.split(","):
        for policy in args.policies.split(","):
            rows = []
            for rep in range(args.repeats):
                run_dir = out / name / policy / str(rep)
                m = run_torchrun(args.stages, [*workloads(args)[name], f"scheduler={policy}",
                                               f"scheduler.token_budget={args.token_budget}", *args.extra], run_dir)
                rows.append(_row(m, json.loads((run_dir / "bubbles.json").read_text())))
            keys = list(rows[0])
            print(f"\n### `{name}`, {policy}\n\n| run | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
            for i, r in enumerate(rows):
                print(f"| {i} | " + " | ".join(_fmt(k, r[k]) for k in keys) + " |")
            print("| min..max | " + " | ".join(f"{_fmt(k, min(r[k] for r in rows))}..{_fmt(k, max(r[k] for r in rows))}"
                                              for k in keys) + " |")
    print(f"\nruns in {out}")
    return 0


def _fmt(key: str, v: float) -> str:
    return f"{v:.1f}" if key in ("tok/s",) or key.endswith("ms/gap") else f"{v:.2f}" if key.endswith("ms/mb") \
        else f"{v:.1%}"


if __name__ == "__main__":
    sys.exit(main())
