"""The LM head on the CPU: ``StageModel.logits`` (final norm and head on the sampled rows) against a plain
``F.linear``, per number of sampled rows, one thread.

    python -m scripts.bench_lm_head [--vocab 49152] [--hidden 384] [--repeats 8]

A decode-only micro-batch samples one row per request in it, often fewer than ten; the head's ``[vocab, hidden]``
weight is then read for a handful of rows, and how the CPU BLAS does that decides the last stage's time in the
decode phase (issue 14's long-prompt sample: 49152 x 384, SmolLM2's vocabulary). Prints a markdown table of the
best of three timings of ``--repeats`` calls each, in ms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rows", default="1,2,4,8,12,16,32,64")
    args = ap.parse_args(argv)
    import torch
    from torch import nn

    from scripts.jobs import machine
    from stages.stage_model import CPU_HEAD_TRANSPOSED_ROWS, StageModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = nn.Linear(args.hidden, args.vocab, bias=False)
    model = StageModel(None, [], [], norm=nn.Identity(), head=head)
    print(f"\n{machine()}; one thread; head {args.vocab} x {args.hidden} float32; best of 3 x {args.repeats} calls; "
          f"StageModel.logits takes weight @ h.T up to {CPU_HEAD_TRANSPOSED_ROWS} rows\n")
    print("| sampled rows | F.linear ms | StageModel.logits ms | speed-up |\n|---|---|---|---|")
    for rows in map(int, args.rows.split(",")):
        h = torch.randn(rows, args.hidden)
        with torch.inference_mode():
            plain = _best_ms(lambda: head(h).float(), args.repeats)
            ours = _best_ms(lambda: model.logits(h), args.repeats)
        print(f"| {rows} | {plain:.2f} | {ours:.2f} | {plain / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
