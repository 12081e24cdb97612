"""Pipeline efficiency: the same requests through 1 stage, 2 stages (one thread per rank) and HF generate.

    python scripts/bench_pipeline.py [--num-requests 16] [--prompt-len 128] [--max-tokens 32] [--policy sarathi]

Reports tokens/s (prompt + output tokens per second of job wall time, and output tokens/s) and the pipeline
efficiency throughput(2 stages) / (2 x throughput(1 stage)), as a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.jobs import machine, run_torchrun  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--policy", default="sarathi")
    ap.add_argument("--token-budget", type=int, default=256)
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate baseline")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run (e.g. model.path=DIR)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    workload = ["workload=synthetic", f"workload.num_requests={args.num_requests}",
                f"workload.prefill_len={args.prompt_len}",
                f"workload.pd_ratio={args.prompt_len / args.max_tokens}", "workload.distribution=uniform",
                f"scheduler={args.policy}", f"scheduler.token_budget={args.token_budget}", *args.extra]
    rows = []
    for stages in (1, 2):
        m = run_torchrun(stages, workload, out / f"{stages}stage")
        rows.append((f"pp-runtime, {stages} stage(s), {args.policy}", m))
    if not args.no_hf:
        from scripts.hf_baseline import main as hf_main

        hf_dir = out / "hf"
        code = hf_main([*workload, "--out", str(hf_dir), "--batch-size", str(args.hf_batch_size)])
        if code == 0:
            import json

            rows.append((f"HF generate, static batches of {args.hf_batch_size}",
                         json.loads((hf_dir / "metrics.json").read_text())))
    from scripts.core_scaling import core_scaling, describe

    scaling = core_scaling(2)
    print(f"\nmachine: {machine()}")
    print(f"workload: {args.num_requests} requests, prompt ~{args.prompt_len} tokens (uniform), "
          f"{args.max_tokens} output tokens on average, all at once\n")
    print("| run | tokens/s (prompt+output) | output tokens/s | wall s | bubble fraction |")
    print("|---|---|---|---|---|")
    for name, m in rows:
        bubbles = m.get("bubble_fraction") or {}
        b = ", ".join(f"{float(v):.1%}" for v in bubbles.values()) if bubbles else "-"
        print(f"| {name} | {m['total_token_throughput']:.1f} | {m['output_throughput']:.1f} | "
              f"{m['duration_s']:.2f} | {b} |")
    one, two = rows[0][1]["total_token_throughput"], rows[1][1]["total_token_throughput"]
    eff = two / (2 * one)
    print(f"\npipeline efficiency = throughput(2) / (2 x throughput(1)) = {eff:.3f}")
    print(f"core scaling on this machine: {describe(scaling)}")
    print(f"runs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
