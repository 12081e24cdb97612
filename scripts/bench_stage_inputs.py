"""Host time to turn a micro-batch plan into a stage's input tensors: the per-token Python construction main used
(copied below as ``_before``) against ``build_stage_inputs`` (+ the sdpa split, + attention.prepare).

    python -m scripts.bench_stage_inputs [--repeat 200]

Two micro-batches of 256 tokens: decode-heavy (256 decodes at contexts 500-700) and mixed (a 192-token chunk
after a 256-token prefix, plus 64 decodes). Block size 16. CPU tensors (no GPU here): the figures are the Python
and numpy work per micro-batch, which on CUDA comes on top of one host-to-device copy (before: one per tensor
and per prefill chunk).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pp_runtime.plan import MicroBatch, Piece  # noqa: E402

BLOCK = 16
CPU = torch.device("cpu")


def _piece(rng: random.Random, seq_id: int, start: int, n: int) -> Piece:
    table = tuple(rng.sample(range(4096), -(-(start + n) // BLOCK)))
    return Piece(seq_id=seq_id, start=start, token_ids=tuple(rng.randrange(50_000) for _ in range(n)),
                 block_table=table, is_prefill=n > 1, sample=True)


def plans() -> dict[str, MicroBatch]:
    rng = random.Random(0)
    decode = MicroBatch(0, tuple(_piece(rng, i, rng.randrange(500, 700), 1) for i in range(256)))
    mixed = MicroBatch(1, (_piece(rng, 0, 256, 192), *(_piece(rng, i, rng.randrange(500, 700), 1)
                                                       for i in range(1, 65))))
    return {"decode-heavy (256 decodes)": decode, "mixed (192-token chunk + 64 decodes)": mixed}


def _before(mb: MicroBatch, device: torch.device) -> None:
    """main's executor.execute + attention.build_metadata input construction (sdpa backend, last stage)."""
    torch.tensor([pos for p in mb.pieces for pos in range(p.start, p.context_len)], dtype=torch.long, device=device)
    torch.tensor([t for p in mb.pieces for t in p.token_ids], dtype=torch.long, device=device)
    bs = BLOCK
    slots, chunks, d_rows, d_ctx, d_tables = [], [], [], [], []
    row = 0
    for p in mb.pieces:
        table = p.block_table
        slots.extend(table[pos // bs] * bs + pos % bs for pos in range(p.start, p.context_len))
        nblk = -(-p.context_len // bs)
        if p.num_tokens == 1:
            d_rows.append(row)
            d_ctx.append(p.context_len)
            d_tables.append(table[:nblk])
        else:
            chunks.append((row, p.num_tokens, p.context_len, torch.tensor(table[:nblk], device=device)))
        row += p.num_tokens
    width = max((len(t) for t in d_tables), default=0)
    padded = [list(t) + [0] * (width - len(t)) for t in d_tables]
    torch.tensor(slots, dtype=torch.long, device=device)
    torch.tensor(d_rows, dtype=torch.long, device=device)
    torch.tensor(d_ctx, dtype=torch.long, device=device)
    torch.tensor(padded, dtype=torch.long, device=device).reshape(len(d_rows), width)
    ends, rows = 0, []
    for p in mb.pieces:
        ends += p.num_tokens
        if p.sample:
            rows.append(ends - 1)
    torch.tensor(rows, dtype=torch.long, device=device)


def _after(mb: MicroBatch, cache, backend: str) -> None:
    from stages.attention import prepare
    from stages.inputs import build_stage_inputs

    inputs = build_stage_inputs(mb, block_size=BLOCK, device=CPU, token_ids=True, sample_rows=True)
    prepare(backend, cache, inputs)


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):  # best of 5 rounds: the machine is shared
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args(argv)
    from stages.kv_cache import KVCache

    torch.set_num_threads(1)
    cfg = type("Cfg", (), dict(num_attention_heads=8, num_key_value_heads=2, head_dim=64, hidden_size=512))()
    cache = KVCache([0], num_blocks=4096, block_size=BLOCK, hf_config=cfg, dtype=torch.float32, device=CPU)
    print("| micro-batch | before: per-token Python (ms) | after: build_stage_inputs + sdpa prepare (ms) | "
          "after, triton/flash inputs (ms) |")
    print("|---|---|---|---|")
    for name, mb in plans().items():
        before = _time(lambda: _before(mb, CPU), args.repeat)
        sdpa = _time(lambda: _after(mb, cache, "sdpa"), args.repeat)
        kernel = _time(lambda: _after(mb, cache, "triton"), args.repeat)
        print(f"| {name} | {before * 1e3:.3f} | {sdpa * 1e3:.3f} | {kernel * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
