"""What each finished request's ``slowdown`` costs rank 0: microseconds of ``request_record`` with and without it.

    python scripts/bench_request_slowdown.py                   # a markdown table, a few seconds
    python scripts/bench_request_slowdown.py --stages 8 --repeat 50

Rank 0 builds a finished request's ``outputs.jsonl`` record inside the engine loop (``stages/rank0.py``), so its
``slowdown`` (``rundir.metrics.request_slowdown``: ``planner/alone.py`` prices the request alone, one cost-model
call per prefill chunk and one per output token after the first) is paid once per finished request, between two
micro-batches. The cost model is ``CostModel.default(stages)`` under sarathi's defaults (chunk 512).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pp_runtime.config import SchedulerConfig
from pp_runtime.planner import CostModel
from pp_runtime.planner.alone import alone_times
from pp_runtime.request import Request, SamplingParams
from pp_runtime.rundir.metrics import request_record
from pp_runtime.sequence import Sequence

SHAPES = ((128, 16), (2048, 256), (32768, 1024))  # (prompt tokens, output tokens)


def bench(prompt_len: int, num_outputs: int, *, stages: int, repeat: int) -> tuple[float, float]:
    """Mean microseconds of one record without and with ``slowdown`` for a finished request of this shape."""
    model, cfg = CostModel.default(stages), SchedulerConfig(chunk_size=512, token_budget=512)
    seq = Sequence(0, Request("r", (5,) * prompt_len, SamplingParams(max_tokens=num_outputs, ignore_eos=True)))
    seq.output_token_ids = [7] * num_outputs
    seq.first_token_s, seq.finish_s, seq.finish_reason = 1.0, 2.0, "length"

    def alone(s: Sequence) -> tuple[float, float]:
        return alone_times(model, cfg, num_slots=stages, prompt_len=s.prompt_len, num_outputs=len(s.output_token_ids))

    out = []
    for kwargs in ({}, {"alone": alone}):
        t0 = time.perf_counter()
        for _ in range(repeat):
            request_record(seq, None, **kwargs)
        out.append((time.perf_counter() - t0) / repeat * 1e6)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20, help="records timed per shape")
    args = ap.parse_args()
    print(f"request_record per finished request, mean us ({args.stages} stages, {args.repeat} repeats)\n")
    print("| prompt tokens | output tokens | without slowdown | with slowdown |")
    print("|---|---|---|---|")
    for prompt_len, num_outputs in SHAPES:
        without, with_ = bench(prompt_len, num_outputs, stages=args.stages, repeat=args.repeat)
        print(f"| {prompt_len} | {num_outputs} | {without:.0f} | {with_:.0f} |", flush=True)


if __name__ == "__main__":
    main()
