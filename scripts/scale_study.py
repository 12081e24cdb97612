"""Scale study by simulation: a GPT-3-175B shape on 8 pipeline stages of A100s (roofline), Orca-like vs SARATHI.

    python scripts/scale_study.py [--num-requests 128] [--prefill-len 1024] [--pd-ratio 32]
                                  [--sarathi-budget 256] [--orca-budget 4096] [--memory-gib 30] [extra overrides]

Each policy is simulated by ``pp-sim``'s machinery (``pp_runtime.sim.sim_job.resolve_sim_job``: the same planner
classes as rank 0, ``sim.cost_model=roofline``, ``sim.gpu=a100``, ``sim.model_shape=gpt3-175b``, one GPU per stage,
NVLink within a node of 8) on a prefill-heavy synthetic mix, all requests arriving at once. Prints throughput, the
bubble fractions, the idle time by cause (pp_runtime/trace/attribution.py) and the ratios against the SARATHI paper's
6.29x fewer bubbles and 1.91x throughput (their metric: median bubble time per request, on TP8 x PP8 = 64 A100s;
here: idle fraction of the window, one A100 per stage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent


def _config(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pp_runtime.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_object(compose("config", overrides=overrides))


def simulate(overrides: list[str], out_dir: Path) -> tuple[dict, dict]:
    """Simulate one config; returns (metrics, bubbles) as written into ``out_dir``."""
    import json

    from pp_runtime.sim.output import write_sim_run
    from pp_runtime.sim.sim_job import resolve_sim_job

    cfg = _config(overrides)
    cfg.output_dir = str(out_dir)
    cfg.tracer.timeline = False
    job = resolve_sim_job(cfg)
    result = job.run()
    bubbles = write_sim_run(out_dir, result, cfg, tokenizer=job.tokenizer, info=job.info())
    return json.loads((out_dir / "metrics.json").read_text()), bubbles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--prefill-len", type=int, default=1024)
    ap.add_argument("--pd-ratio", type=float, default=32.0)
    ap.add_argument("--sarathi-budget", type=int, default=256)
    ap.add_argument("--orca-budget", type=int, default=4096)
    ap.add_argument("--memory-gib", type=float, default=30.0, help="KV cache per stage (A100 80 GB - weights)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for both policies")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="scale_study_"))
    base = [f"pipeline.stages={args.stages}", "sim.cost_model=roofline", "sim.gpu=a100", "sim.model_shape=gpt3-175b",
            "sim.planner_time_us=200", "workload=synthetic", f"workload.num_requests={args.num_requests}",
            f"workload.prefill_len={args.prefill_len}", f"workload.pd_ratio={args.pd_ratio}",
            f"cache.memory_gib={args.memory_gib}", *args.extra]
    runs = {}
    for policy, budget in (("orca", args.orca_budget), ("sarathi", args.sarathi_budget)):
        t0 = time.monotonic()
        runs[policy] = simulate([*base, f"scheduler={policy}", f"scheduler.token_budget={budget}"], out / policy)
        print(f"simulated {policy} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print(f"GPT-3-175B shape, {args.stages} stages x 1 A100 (roofline), {args.num_requests} requests, prompt "
          f"~{args.prefill_len}, P:D {args.pd_ratio:g}; sarathi budget {args.sarathi_budget}, "
          f"orca {args.orca_budget}\n")
    print("| policy | total tok/s | output tok/s | TBT p50 / p99 ms | bubble (pipeline) | steady bubble | "
          "idle by cause: fill/drain, imbalance, hop, rest (% of stage-time) | micro-batches |")
    print("|---|---|---|---|---|---|---|---|")
    for policy, (m, b) in runs.items():
        p, att = b["pipeline"], b["attribution"]["pipeline"]
        total = p["wall_s"] * p["num_stages"]
        causes = ", ".join(f"{att[f'{k}_s'] / total:.1%}" for k in ("fill_drain", "imbalance", "hop", "host", "rest"))
        print(f"| {policy} | {m['total_token_throughput']:.0f} | {m['output_throughput']:.0f} | "
              f"{m['median_itl_ms']:.1f} / {m['p99_itl_ms']:.1f} | {p['bubble_fraction']:.1%} | "
              f"{p['steady_bubble_fraction']:.1%} | {causes} | {b['stages']['0']['num_microbatches']} |")
    (om, ob), (sm, sb) = runs["orca"], runs["sarathi"]
    bub = ob["pipeline"]["bubble_fraction"] / max(sb["pipeline"]["bubble_fraction"], 1e-12)
    steady = ob["pipeline"]["steady_bubble_fraction"] / max(sb["pipeline"]["steady_bubble_fraction"], 1e-12)
    thr = sm["total_token_throughput"] / om["total_token_throughput"]
    print(f"\nsarathi vs orca: {bub:.2f}x lower bubble fraction ({steady:.2f}x steady), {thr:.2f}x throughput "
          f"(paper: 6.29x fewer bubbles, 1.91x throughput)\nruns in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
