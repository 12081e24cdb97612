"""The sdpa backend: torch's scaled_dot_product_attention over the paged cache. The CPU path, and the
reference the triton and flash backends are tested against.

Multi-token chunks are attended one SDPA call each, over their blocks gathered into a dense buffer (causal
against their cached prefix); all single-token pieces go in one padded, masked SDPA call. Per micro-batch the
decode tables and masks are built once (``prepare`` and the first layer) and shared by every layer. The split
is read from the plan's host numbers (``StageInputs.*_host``), so this backend cannot run inside a CUDA graph.
On CUDA this path must never reach cuDNN's SDPA: ``configure_device`` turns it off when the stage starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stages.attention import AttentionBackend
from stages.inputs import StageInputs


@dataclass
class SdpaState:
    chunks: list[tuple[int, int, int, int]]  # per multi-token piece: (first row, q_len, context_len, piece index)
    decode_pieces: torch.Tensor  # [Nd] int64: index of each single-token piece
    decode_rows: torch.Tensor  # [Nd] int64: packed row of each single-token piece
    decode_ctx: torch.Tensor  # [Nd] int64: its context length
    decode_max_ctx: int  # longest single-token piece's context
    tables: dict = field(default_factory=dict)  # block_size -> (chunk blocks, decode tables), built by the first layer
    masks: dict = field(default_factory=dict)  # window -> (chunk masks, decode mask), built by the first layer


def prepare(inputs: StageInputs) -> SdpaState:
    """Split ``inputs`` into chunks and decodes, on the host from the plan's numbers (``*_host`` fields)."""
    if inputs.cu_seqlens_q_host is None:
        raise ValueError("the sdpa backend needs build_stage_inputs' host offsets; it cannot run in a CUDA graph")
    cu, ctx = inputs.cu_seqlens_q_host, inputs.context_lens_host
    q_lens = np.diff(cu)
    single = q_lens == 1
    multi = np.flatnonzero(~single)
    idx = torch.from_numpy(np.flatnonzero(single)).to(inputs.cu_seqlens_q.device, non_blocking=True)
    return SdpaState(
        chunks=list(zip(cu[multi].tolist(), q_lens[multi].tolist(), ctx[multi].tolist(), multi.tolist())),
        decode_pieces=idx,
        decode_rows=inputs.cu_seqlens_q[idx].long(),
        decode_ctx=inputs.context_lens[idx].long(),
        decode_max_ctx=int(ctx[single].max(initial=0)),
    )


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx, *, scale: float,
           window: int | None) -> torch.Tensor:
    """q ``[T, Hq, D]``; caches ``[blocks, block_size, Hkv, D]`` (this micro-batch's keys already written)."""
    st: SdpaState = ctx.state
    cache = ctx.cache
    t, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    if bs not in st.tables:
        st.tables[bs] = _tables(st, ctx.inputs.block_tables, bs)
    chunk_blocks, decode_tables = st.tables[bs]
    if window not in st.masks:
        st.masks[window] = _masks(st, decode_tables, bs, window, q.device)
    chunk_masks, decode_mask = st.masks[window]
    gqa = hq != hkv
    out = q.new_empty(t, hq, d)  # [T, Hq, D]
    for (row, q_len, n_ctx, _), blocks, mask in zip(st.chunks, chunk_blocks, chunk_masks):
        k = cache.gather(k_cache, blocks, 0).view(-1, hkv, d)[:n_ctx].transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
        v = cache.gather(v_cache, blocks, 1).view(-1, hkv, d)[:n_ctx].transpose(0, 1).unsqueeze(0)
        qc = q[row:row + q_len].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
        o = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                           enable_gqa=gqa)
        out[row:row + q_len] = o[0].transpose(0, 1)
    n = st.decode_rows.numel()
    if n:
        width = decode_tables.numel() // n
        k = cache.gather(k_cache, decode_tables, 0).view(n, width * bs, hkv, d).transpose(1, 2)  # [Nd, Hkv, L, D]
        v = cache.gather(v_cache, decode_tables, 1).view(n, width * bs, hkv, d).transpose(1, 2)
        qd = q[st.decode_rows].unsqueeze(2)  # [Nd, Hq, 1, D]
        o = F.scaled_dot_product_attention(qd, k, v, attn_mask=decode_mask, scale=scale, enable_gqa=gqa)
        out[st.decode_rows] = o[:, :, 0]
    return out


def _tables(st: SdpaState, block_tables: torch.Tensor, block_size: int):
    """Each chunk's blocks ([n] int32 views) and the decodes' tables ([Nd * W] int32, padded with block 0, which
    the decode mask hides), cut to the blocks the contexts cover."""
    chunks = [block_tables[piece, :-(-n_ctx // block_size)] for _, _, n_ctx, piece in st.chunks]
    width = -(-st.decode_max_ctx // block_size)
    return chunks, block_tables[st.decode_pieces, :width].reshape(-1)


def _masks(st: SdpaState, decode_tables: torch.Tensor, block_size: int, window: int | None, device: torch.device):
    """Boolean masks (True: attend) of every chunk ([q_len, ctx], None where plain causal does) and of the
    decodes ([Nd, 1, 1, W * block_size]), for one window: the same for every layer with that window."""
    chunk_masks = []
    for _, q_len, n_ctx, _ in st.chunks:
        if n_ctx == q_len and window is None:
            chunk_masks.append(None)
            continue
        q_pos = torch.arange(n_ctx - q_len, n_ctx, device=device)[:, None]
        k_pos = torch.arange(n_ctx, device=device)[None, :]
        chunk_masks.append(_window(k_pos <= q_pos, q_pos, k_pos, window))
    decode_mask = None
    n = st.decode_rows.numel()
    if n:
        length = decode_tables.numel() // n * block_size
        k_pos = torch.arange(length, device=device)[None, :]
        q_pos = (st.decode_ctx - 1)[:, None]
        decode_mask = _window(k_pos <= q_pos, q_pos, k_pos, window)[:, None, None, :]
    return chunk_masks, decode_mask


def _window(mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    # Same rule as transformers' sliding-window masks: a query sees keys less than `window` positions back.
    return mask if window is None else mask & (q_pos - k_pos < window)


def _check_device(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _check_block_size(block_size: int) -> str | None:
    return None


BACKEND = AttentionBackend("sdpa", prepare, attend, capturable=False, check_device=_check_device,
                           check_block_size=_check_block_size)
