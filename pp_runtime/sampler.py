"""Turn the last stage's logits into next tokens: greedy, or temperature / top-k / top-p with per-step seeds.

Each sampled token draws from its own generator seeded by (request seed, step), so a seeded request gives
the same tokens however it is batched, chunked or split over stages.
"""

from __future__ import annotations

import torch

from pp_runtime.plan import Piece

_MIX = 1_000_003  # odd multiplier that spreads (seed, step) pairs over distinct generator seeds


def sample(logits: torch.Tensor, pieces: list[Piece]) -> list[int]:
    """``logits`` ``[S, vocab]`` (float32), one row per sampling piece in order; returns S token ids."""
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(pieces):
        if not p.params.greedy:
            out[i] = _sample_one(logits[i], p)
    return out


def _sample_one(row: torch.Tensor, p: Piece) -> int:
    params = p.params
    row = (row - row.max()) / params.temperature  # shift first: a tiny temperature must not overflow to inf
    if params.top_k and params.top_k < row.numel():
        kth = torch.topk(row, params.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the first one always stays).
        drop = (cum - sorted_logits.softmax(-1)) >= params.top_p
        row = row.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    seed = params.seed if params.seed is not None else p.seq_id
    gen = torch.Generator(device=row.device).manual_seed((seed * _MIX + p.step) % (2**63))
    return int(torch.multinomial(row.softmax(-1), 1, generator=gen).item())
