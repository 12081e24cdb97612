"""The sdpa backend: torch's scaled_dot_product_attention over the paged cache. The CPU path, and the
reference the triton and flash backends are tested against.

Multi-token chunks are attended one SDPA call each, over their blocks gathered into a dense buffer (causal
against their cached prefix); all single-token pieces go in one padded, masked SDPA call. Per micro-batch the
decode tables and masks are built once (``prepare`` and the first layer) and shared by every layer.
On CUDA this path must never reach cuDNN's SDPA: ``configure_device`` turns it off when the stage starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from stages.inputs import StageInputs


@dataclass
class SdpaState:
    chunks: list[tuple[int, int, int, torch.Tensor]]  # (first row, q_len, context_len, blocks [n] int32)
    decode_rows: torch.Tensor  # [Nd] int64: packed row of each single-token piece
    decode_ctx: torch.Tensor  # [Nd] int64: its context length
    decode_tables: torch.Tensor  # [Nd * W] int32: its blocks, padded with block 0 (masked out)
    masks: dict = field(default_factory=dict)  # window -> (chunk masks, decode mask), built by the first layer


def prepare(inputs: StageInputs) -> SdpaState:
    """Split ``inputs`` into chunks and decodes (needs ``inputs.sdpa``: build_stage_inputs(sdpa_split=True))."""
    split = inputs.sdpa
    bs_tables = inputs.block_tables
    chunks = []
    for row, q_len, ctx, piece, nblk in split.chunks:
        chunks.append((row, q_len, ctx, bs_tables[piece, :nblk]))
    idx = split.decode_pieces
    return SdpaState(
        chunks=chunks,
        decode_rows=inputs.cu_seqlens_q[idx].long(),
        decode_ctx=inputs.context_lens[idx].long(),
        decode_tables=bs_tables[idx, :split.decode_width].reshape(-1),
    )


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx, *, scale: float,
           window: int | None) -> torch.Tensor:
    """q ``[T, Hq, D]``; caches ``[blocks, block_size, Hkv, D]`` (this micro-batch's keys already written)."""
    st: SdpaState = ctx.state
    cache = ctx.cache
    t, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    if window not in st.masks:
        st.masks[window] = _masks(st, bs, window, q.device)
    chunk_masks, decode_mask = st.masks[window]
    gqa = hq != hkv
    out = q.new_empty(t, hq, d)  # [T, Hq, D]
    for (row, q_len, n_ctx, blocks), mask in zip(st.chunks, chunk_masks):
        k = cache.gather(k_cache, blocks, 0).view(-1, hkv, d)[:n_ctx].transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
        v = cache.gather(v_cache, blocks, 1).view(-1, hkv, d)[:n_ctx].transpose(0, 1).unsqueeze(0)
        qc = q[row:row + q_len].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
        o = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                           enable_gqa=gqa)
        out[row:row + q_len] = o[0].transpose(0, 1)
    n = st.decode_rows.numel()
    if n:
        width = st.decode_tables.numel() // n
        k = cache.gather(k_cache, st.decode_tables, 0).view(n, width * bs, hkv, d).transpose(1, 2)  # [Nd, Hkv, L, D]
        v = cache.gather(v_cache, st.decode_tables, 1).view(n, width * bs, hkv, d).transpose(1, 2)
        qd = q[st.decode_rows].unsqueeze(2)  # [Nd, Hq, 1, D]
        o = F.scaled_dot_product_attention(qd, k, v, attn_mask=decode_mask, scale=scale, enable_gqa=gqa)
        out[st.decode_rows] = o[:, :, 0]
    return out


def _masks(st: SdpaState, block_size: int, window: int | None, device: torch.device):
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
        length = st.decode_tables.numel() // n * block_size
        k_pos = torch.arange(length, device=device)[None, :]
        q_pos = (st.decode_ctx - 1)[:, None]
        decode_mask = _window(k_pos <= q_pos, q_pos, k_pos, window)[:, None, None, :]
    return chunk_masks, decode_mask


def _window(mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    # Same rule as transformers' sliding-window masks: a query sees keys less than `window` positions back.
    return mask if window is None else mask & (q_pos - k_pos < window)
