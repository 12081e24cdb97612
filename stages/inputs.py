"""A micro-batch as the tensors one stage reads, built with numpy vector ops and shipped in one copy.

``build_stage_inputs`` walks the plan's pieces once (a Python loop over pieces, never over tokens) to collect
per-piece scalars and block tables, derives every per-token array with numpy (``np.repeat`` / ``cumsum``), packs
all of them into one byte buffer (pinned on CUDA) and moves it to the device with ONE non-blocking copy; the
fields are views into that device buffer. A stage gets only what it reads: token ids on stage 0, sampled rows
on the last stage. The per-piece query starts and context lengths also stay on the host (numpy, free: the plan's
own numbers) for backends that split a micro-batch on the host (sdpa).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from pp_runtime.plan import MicroBatch


@dataclass(frozen=True)
class StageInputs:
    """Inputs of one stage for one micro-batch (B pieces, T packed tokens, S sampled rows): device tensors, plus
    host copies of the per-piece offsets and contexts (the plan's numbers; None in CUDA graphs' static views)."""

    num_tokens: int  # T
    positions: torch.Tensor  # [T] int64: position of each packed token in its sequence
    slot_mapping: torch.Tensor  # [T] int64: flat cache slot (block * block_size + offset) of each new token
    cu_seqlens_q: torch.Tensor  # [B+1] int32: first packed row of each piece, then T
    context_lens: torch.Tensor  # [B] int32: cached prefix + the piece's own tokens
    block_tables: torch.Tensor  # [B, W] int32: physical blocks, padded with 0 past each context
    max_q: int  # longest piece (host int from the plan: no device read)
    max_context: int  # longest context
    token_ids: torch.Tensor | None = None  # [T] int64, stage 0 only
    sample_rows: torch.Tensor | None = None  # [S] int64: packed row of each sampled token, last stage only
    cu_seqlens_q_host: np.ndarray | None = None  # [B+1] int64: cu_seqlens_q on the host
    context_lens_host: np.ndarray | None = None  # [B] int64: context_lens on the host


def build_stage_inputs(mb: MicroBatch, *, block_size: int, device: torch.device, token_ids: bool = False,
                       sample_rows: bool = False, table_width: int | None = None) -> StageInputs:
    """Vectorised ``StageInputs`` of ``mb``; ``table_width`` fixes W (else: the longest context's block count)."""
    pieces = mb.pieces
    b = len(pieces)
    # The one loop over pieces: per-piece scalars, and each block table cut to the blocks its context covers.
    scalars = np.array([(p.start, len(p.token_ids), p.sample) for p in pieces], dtype=np.int64).reshape(b, 3)
    starts, q_lens, sampled = scalars[:, 0], scalars[:, 1], scalars[:, 2].astype(bool)
    ctx = starts + q_lens  # [B]
    nblk = -(-ctx // block_size)  # [B]
    width = int(nblk.max(initial=0)) if table_width is None else table_width
    tables = np.zeros((b, width), dtype=np.int32)
    flat = np.fromiter(chain.from_iterable(p.block_table[:n] for p, n in zip(pieces, nblk.tolist())),
                       dtype=np.int32, count=int(nblk.sum()))
    tables[np.arange(width)[None, :] < nblk[:, None]] = flat  # row-major fill matches the chained order

    cu = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(q_lens, out=cu[1:])
    t = int(cu[-1])
    piece_of = np.repeat(np.arange(b), q_lens)  # [T]
    positions = np.arange(t) + np.repeat(starts - cu[:-1], q_lens)  # [T]
    slots = tables[piece_of, positions // block_size].astype(np.int64) * block_size + positions % block_size

    int64s: dict[str, np.ndarray] = {"positions": positions, "slot_mapping": slots}
    if token_ids:
        int64s["token_ids"] = np.fromiter(chain.from_iterable(p.token_ids for p in pieces), dtype=np.int64, count=t)
    if sample_rows:
        int64s["sample_rows"] = (cu[1:] - 1)[sampled]
    int32s = {"cu_seqlens_q": cu, "context_lens": ctx, "block_tables": tables}
    dev = _ship(int64s, int32s, device)
    return StageInputs(
        num_tokens=t, positions=dev["positions"], slot_mapping=dev["slot_mapping"],
        cu_seqlens_q=dev["cu_seqlens_q"], context_lens=dev["context_lens"],
        block_tables=dev["block_tables"].view(b, width), max_q=int(q_lens.max(initial=0)),
        max_context=int(ctx.max(initial=0)), token_ids=dev.get("token_ids"), sample_rows=dev.get("sample_rows"),
        cu_seqlens_q_host=cu, context_lens_host=ctx,
    )


def _ship(int64s: dict[str, np.ndarray], int32s: dict[str, np.ndarray],
          device: torch.device) -> dict[str, torch.Tensor]:
    """Pack the arrays into one byte buffer (int64 fields first, so every field stays aligned), copy it to
    ``device`` once (pinned, non-blocking on CUDA) and return typed views of the device copy."""
    layout, offset = [], 0
    for dtype, arrays in ((np.int64, int64s), (np.int32, int32s)):
        size = np.dtype(dtype).itemsize
        for name, arr in arrays.items():
            layout.append((name, dtype, offset, arr.size))
            offset += arr.size * size
    offset = -(-offset // 8) * 8
    cuda = device.type == "cuda"
    # The caching host allocator keeps a pinned block alive until the copy reading it has run, so a fresh
    # buffer per micro-batch is safe to fill while earlier copies are still queued.
    host = torch.empty(offset, dtype=torch.uint8, pin_memory=cuda)
    raw = host.numpy()
    arrays = {**int64s, **int32s}
    for name, dtype, start, n in layout:
        raw[start:start + n * np.dtype(dtype).itemsize].view(dtype)[:] = arrays[name].reshape(-1)
    buf = host.to(device, non_blocking=True) if cuda else host
    out = {}
    for name, dtype, start, n in layout:
        tdtype = torch.int64 if dtype is np.int64 else torch.int32
        out[name] = buf[start:start + n * np.dtype(dtype).itemsize].view(tdtype)
    return out
