"""Planner cost per micro-batch: mean microseconds of schedule + postprocess at 64, 512 and 4096 running requests.

    python scripts/bench_planner.py                  # every policy, prints a markdown table (< 1 min)
    python scripts/bench_planner.py --policies sarathi --running 4096 --micro-batches 400

The planner is driven as rank 0 drives it (``num_slots`` micro-batches in flight, oldest back first) over a
churning workload: ``running`` requests admitted (``max_num_seqs``) and as many queued behind them, short
prompts and 64-128 output tokens, so that once the running set is full, requests finish and newcomers are
admitted every few micro-batches: micro-batches hold decodes and prefill chunks. Only the planner's own calls
are timed, from the first finished request on. The token budget is ``running / num_slots + 256``: every slot's
decodes fit, with room for prefill.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pp_runtime.config import SchedulerConfig
from pp_runtime.planner import CostModel, make_planner
from pp_runtime.request import Request, SamplingParams

POLICIES = ("sarathi", "orca", "vllm", "static", "fcfs")


def bench(policy: str, running: int, *, num_slots: int, micro_batches: int, seed: int = 0) -> dict:
    """Time ``micro_batches`` micro-batches after a warm-up that fills the running set."""
    budget = running // num_slots + 256
    cfg = SchedulerConfig(policy=policy, token_budget=budget, chunk_size=budget, max_num_seqs=running)
    rng = random.Random(seed)
    requests = [Request(f"r{i}", tuple(rng.randrange(1000) for _ in range(rng.randint(4, 16))),
                        SamplingParams(max_tokens=rng.randint(64, 128), ignore_eos=True)) for i in range(2 * running)]
    planner = make_planner(cfg, num_blocks=running * 10 + 64, block_size=16, num_slots=num_slots,
                           max_model_len=4096, cost_model=CostModel.default(num_slots))
    for r in requests:
        planner.add_request(r)
    in_flight: deque = deque()
    clock = time.perf_counter_ns
    spent_ns = done = pieces = running_sum = 0
    warm = True
    while planner.has_unfinished() and done < micro_batches:
        t0 = clock()
        while len(in_flight) < num_slots:
            mb = planner.schedule(0.0)
            if mb is None:
                break
            in_flight.append(mb)
        if not in_flight:
            raise RuntimeError(f"{policy} stalled during the benchmark")
        mb = in_flight.popleft()
        t1 = clock()
        sampled = [rng.randrange(1000) for p in mb.pieces if p.sample]  # the model's part: not timed
        t2 = clock()
        planner.postprocess(mb, sampled, 0.0)
        t3 = clock()
        if warm and len(planner.running) >= running * 0.9 and planner.finished:
            warm = False  # the running set is full and churning: measure from here
        if not warm:
            spent_ns += (t1 - t0) + (t3 - t2)
            done += 1
            pieces += len(mb.pieces)
            running_sum += len(planner.running)
    if done == 0:
        raise RuntimeError(f"{policy} at {running} running finished before the measurement started")
    return {"us_per_mb": spent_ns / done / 1e3, "pieces_per_mb": pieces / done, "mean_running": running_sum / done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--running", nargs="+", type=int, default=[64, 512, 4096])
    ap.add_argument("--num-slots", type=int, default=4, help="micro-batches in flight (pipeline depth)")
    ap.add_argument("--micro-batches", type=int, default=200, help="timed micro-batches per cell")
    args = ap.parse_args()
    cols = " | ".join(f"{n} running" for n in args.running)
    print(f"Planner cost per micro-batch, mean us of schedule + postprocess ({args.num_slots} slots, "
          f"{args.micro_batches} micro-batches; in brackets: pieces per micro-batch, mean running requests)\n")
    print(f"| policy | {cols} |")
    print("|---" * (len(args.running) + 1) + "|")
    for policy in args.policies:
        cells = []
        for n in args.running:
            r = bench(policy, n, num_slots=args.num_slots, micro_batches=args.micro_batches)
            cells.append(f"{r['us_per_mb']:.0f} ({r['pieces_per_mb']:.0f} pc, {r['mean_running']:.0f} run)")
        print(f"| {policy} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
