"""Paged attention for token-packed micro-batches, plugged into Hugging Face models as an attention backend.

``register()`` adds the ``pp_paged`` implementation to transformers' ``AttentionInterface``, so the stock
model classes run unchanged: each decoder layer hands us its projected (and rotary-embedded) query, key and
value for the packed tokens of one micro-batch, plus our per-micro-batch ``AttentionMetadata`` passed through
the layer's ``**kwargs`` as ``pp_attn``. We write the new keys/values into the stage's paged cache and attend
each packed sequence causally over its cached prefix plus its own new tokens.

Backends: torch SDPA everywhere; flash-attn's varlen kernel with a block table on CUDA when it imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pp_runtime.kv_cache import KVCache
from pp_runtime.plan import MicroBatch

NAME = "pp_paged"


@dataclass
class AttentionMetadata:
    """Where each packed token's keys go and what each packed sequence attends to; shared by a stage's layers."""

    cache: KVCache
    slot_mapping: torch.Tensor  # [T] int64: flat cache slot (block * block_size + offset) per new token
    # Pieces of more than one token: (first packed row, query length, context length, block ids [n] int64).
    chunks: list[tuple[int, int, int, torch.Tensor]]
    # Single-token pieces, attended in one padded batch.
    decode_rows: torch.Tensor  # [Nd] int64: packed row of each decode token
    decode_ctx: torch.Tensor  # [Nd] int64: context length (cached prefix + the token)
    decode_tables: torch.Tensor  # [Nd, max_blocks] int64, padded with block 0 (masked out)
    backend: str = "sdpa"
    # flash-attn varlen inputs (only built for the flash backend).
    cu_q: torch.Tensor | None = None
    cu_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0
    tables: torch.Tensor | None = None


def build_metadata(mb: MicroBatch, cache: KVCache, device: torch.device, backend: str = "sdpa") -> AttentionMetadata:
    bs = cache.block_size
    slots: list[int] = []
    chunks, d_rows, d_ctx, d_tables = [], [], [], []
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
    meta = AttentionMetadata(
        cache=cache,
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
        chunks=chunks,
        decode_rows=torch.tensor(d_rows, dtype=torch.long, device=device),
        decode_ctx=torch.tensor(d_ctx, dtype=torch.long, device=device),
        decode_tables=torch.tensor(padded, dtype=torch.long, device=device).reshape(len(d_rows), width),
        backend=backend,
    )
    if backend == "flash":
        q_lens = [p.num_tokens for p in mb.pieces]
        k_lens = [p.context_len for p in mb.pieces]
        nblk = max(-(-k // bs) for k in k_lens)
        meta.cu_q = torch.tensor([0] + _cumsum(q_lens), dtype=torch.int32, device=device)
        meta.cu_k = torch.tensor([0] + _cumsum(k_lens), dtype=torch.int32, device=device)
        meta.max_q, meta.max_k = max(q_lens), max(k_lens)
        meta.tables = torch.tensor([list(p.block_table[:nblk]) + [0] * (nblk - len(p.block_table[:nblk]))
                                    for p in mb.pieces], dtype=torch.int32, device=device)
    return meta


def _cumsum(xs: list[int]) -> list[int]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``pp_paged`` attention function: query ``[1, Hq, T, D]``, key/value ``[1, Hkv, T, D]``.

    Returns ``([1, T, Hq, D], None)`` like transformers' own backends.
    """
    meta: AttentionMetadata = kwargs["pp_attn"]
    window = kwargs.get("sliding_window")
    k_cache, v_cache = meta.cache.layer(module.layer_idx)  # [blocks, block_size, Hkv, D]
    _, hkv, t, d = key.shape
    flat_k = k_cache.view(-1, hkv, d)
    flat_v = v_cache.view(-1, hkv, d)
    flat_k.index_copy_(0, meta.slot_mapping, key[0].transpose(0, 1).to(k_cache.dtype))
    flat_v.index_copy_(0, meta.slot_mapping, value[0].transpose(0, 1).to(v_cache.dtype))
    if meta.backend == "flash":
        return _flash(query, k_cache, v_cache, meta, scaling, window), None

    hq = query.shape[1]
    out = query.new_empty(t, hq, d)  # [T, Hq, D]
    cache = meta.cache
    for row, q_len, ctx, blocks in meta.chunks:
        k = cache.gather(k_cache, blocks, 0).view(-1, hkv, d)[:ctx].transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
        v = cache.gather(v_cache, blocks, 1).view(-1, hkv, d)[:ctx].transpose(0, 1).unsqueeze(0)
        q = query[:, :, row:row + q_len]  # [1, Hq, q_len, D]
        if ctx == q_len and window is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=hq != hkv)
        else:
            q_pos = torch.arange(ctx - q_len, ctx, device=q.device)[:, None]
            k_pos = torch.arange(ctx, device=q.device)[None, :]
            mask = _window(k_pos <= q_pos, q_pos, k_pos, window)  # [q_len, ctx]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=hq != hkv)
        out[row:row + q_len] = o[0].transpose(0, 1)
    if meta.decode_rows.numel():
        n, width = meta.decode_tables.shape
        bs = k_cache.shape[1]
        tables = meta.decode_tables.reshape(-1)
        k = cache.gather(k_cache, tables, 0).view(n, width * bs, hkv, d).transpose(1, 2)  # [Nd, Hkv, L, D]
        v = cache.gather(v_cache, tables, 1).view(n, width * bs, hkv, d).transpose(1, 2)
        q = query[0, :, meta.decode_rows].transpose(0, 1).unsqueeze(2)  # [Nd, Hq, 1, D]
        k_pos = torch.arange(width * bs, device=q.device)[None, :]
        q_pos = (meta.decode_ctx - 1)[:, None]
        mask = _window(k_pos <= q_pos, q_pos, k_pos, window)[:, None, None, :]  # [Nd, 1, 1, L]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=hq != hkv)
        out[meta.decode_rows] = o[:, :, 0]
    return out.unsqueeze(0), None


def _window(mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    # Same rule as transformers' sliding-window masks: a query sees keys less than `window` positions back.
    return mask if window is None else mask & (q_pos - k_pos < window)


def _flash(query, k_cache, v_cache, meta: AttentionMetadata, scaling, window):
    from flash_attn import flash_attn_varlen_func

    q = query[0].transpose(0, 1)  # [T, Hq, D]
    out = flash_attn_varlen_func(
        q, k_cache, v_cache, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, softmax_scale=scaling, causal=True,
        window_size=(-1, -1) if window is None else (window - 1, 0), block_table=meta.tables)
    return out.unsqueeze(0)  # [1, T, Hq, D]


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose_backend(requested: str, device: torch.device, block_size: int) -> str:
    """Pick sdpa or flash; flash needs CUDA, the flash-attn package and a block size that is a multiple of 256."""
    if requested == "sdpa" or device.type != "cuda":
        if requested == "flash":
            raise ValueError("model.attention=flash needs device=cuda; use model.attention=auto or sdpa on the CPU")
        return "sdpa"
    ok = flash_available() and block_size % 256 == 0
    if requested == "flash" and not ok:
        raise ValueError("model.attention=flash needs the flash-attn package (pip install -e .[flash]) and "
                         f"cache.block_size a multiple of 256 (got {block_size})")
    return "flash" if ok else "sdpa"


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, paged_attention)
