"""Tracer overhead: the same job with the tracer on and off, alternating, and the cost of one recorded event.

    python scripts/bench_tracer.py [--repeats 3] [--stages 2] [extra Hydra overrides]

Prints mean tokens/s with the tracer on and off, the relative difference, and the per-event cost of
``Tracer.record`` / ``Tracer.span`` measured in a tight loop, against the mean compute step of the traced runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.jobs import machine, run_torchrun  # noqa: E402


def event_cost_ns(n: int = 200_000) -> tuple[float, float]:
    from pp_runtime.trace.tracer import EventKind, Tracer

    tracer = Tracer(0, capacity=n)
    start = time.perf_counter_ns()
    for i in range(n):
        tracer.record(EventKind.COMPUTE, i, i + 1, i, 1, 1)
    record = (time.perf_counter_ns() - start) / n
    tracer = Tracer(0, capacity=n)
    start = time.perf_counter_ns()
    for i in range(n):
        with tracer.span(EventKind.COMPUTE, i, 1, 1):
            pass
    return record, (time.perf_counter_ns() - start) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench_tracer_"))
    base = ["workload=synthetic", "workload.num_requests=16", "workload.prefill_len=64", "workload.pd_ratio=2",
            *args.extra]
    runs = {True: [], False: []}
    steps = []
    for r in range(args.repeats):
        for enabled in (True, False):
            m = run_torchrun(args.stages, [*base, f"tracer.enabled={str(enabled).lower()}"],
                             out / f"{r}_{enabled}")
            runs[enabled].append(m["total_token_throughput"])
            if enabled:
                bubbles = json.loads((out / f"{r}_{enabled}" / "bubbles.json").read_text())
                st = bubbles["stages"]["0"]
                steps.append(st["busy_s"] / max(1, st["num_compute_events"]))
    on, off = statistics.mean(runs[True]), statistics.mean(runs[False])
    record_ns, span_ns = event_cost_ns()
    step_s = statistics.mean(steps)
    # Per micro-batch a stage records about 4 events (plan or wait, compute, send).
    print(f"machine: {machine()}")
    print(f"{args.stages} stages, {args.repeats} runs each, alternating; workload: {' '.join(base)}")
    print(f"tokens/s with tracer: {on:.1f} (runs {', '.join(f'{x:.1f}' for x in runs[True])})")
    print(f"tokens/s without:     {off:.1f} (runs {', '.join(f'{x:.1f}' for x in runs[False])})")
    print(f"difference: {(off - on) / off:+.2%} of throughput (run-to-run noise included)")
    print(f"one record(): {record_ns:.0f} ns, one span(): {span_ns:.0f} ns; mean compute step {step_s * 1e3:.1f} ms "
          f"-> 4 events per step = {4 * span_ns / (step_s * 1e9):.4%} of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
