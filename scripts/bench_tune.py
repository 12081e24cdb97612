"""pp-tune's pick against the default config, both run for real (torchrun, CPU), alternating.

    python -m scripts.bench_tune --tbt-slo-ms 800 --repeats 2 workload=synthetic workload.num_requests=16 \
        workload.prefill_len=128 workload.pd_ratio=4 sim.cost_model=layer_profile sim.layer_profile_path=FILE

Tunes ``--stages`` stages by simulation (``launch.tune``), then runs the default and the pick ``--repeats`` times
each, interleaved so that the shared machine's drift hits both alike, and prints predicted and measured output
tokens/s and p99 time between tokens as a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from launch.tune import compose, tune, write_override_file
from pp_runtime.sim.tuning import TBT, THROUGHPUT
from scripts.jobs import machine, run_torchrun


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="the job's Hydra overrides (workload, sim)")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--tbt-slo-ms", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-sims", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_intermixed_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_tune_"))).resolve()
    job = [f"pipeline.stages={args.stages}", *args.overrides]
    result = tune(compose(job), tbt_slo_ms=args.tbt_slo_ms, max_sims=args.max_sims)
    write_override_file(result.winner.candidate, out, "best")
    # Only the workload and model go to the real runs; sim.* is the simulator's.
    real = [o for o in job if not o.startswith("sim.")]
    runs = {"default": real, "pp-tune pick": [*real, f"hydra.searchpath=[file://{out}]", "+tune=best"]}
    measured: dict[str, list[dict]] = {name: [] for name in runs}
    for i in range(args.repeats):
        for name, overrides in runs.items():
            measured[name].append(run_torchrun(args.stages, overrides, out / f"{name.replace(' ', '_')}_{i}"))
    predicted = {"default": result.default, "pp-tune pick": result.winner}
    print(f"\n{machine()}; {args.stages} stages; --tbt-slo-ms {args.tbt_slo_ms}; {len(result.trials)} simulations")
    print("\n| config | predicted out tok/s | measured out tok/s (runs) | predicted p99 TBT ms | measured p99 TBT ms |")
    print("|---|---|---|---|---|")
    for name in runs:
        tput = [m[THROUGHPUT] for m in measured[name]]
        tbt = [m[TBT] for m in measured[name]]
        print(f"| {name}: {predicted[name].candidate} | {predicted[name].throughput:.1f} | "
              f"{statistics.median(tput):.1f} ({', '.join(f'{t:.1f}' for t in tput)}) | "
              f"{predicted[name].p99(TBT):.0f} | {statistics.median(tbt):.0f} ({', '.join(f'{t:.0f}' for t in tbt)}) |")


if __name__ == "__main__":
    main()
