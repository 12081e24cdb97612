"""Paged attention in Triton: one launch per layer for a whole packed micro-batch, prefill chunks and decodes alike.

Algorithm. Flash-attention's online softmax, reading keys and values straight from the paged cache through the
block table: no gather into dense tensors. A program owns one tile of BLOCK_Q consecutive query tokens of one
sequence and one KV head; its BLOCK_M = BLOCK_Q * GROUP_PAD rows are (token, query head of that KV head's group)
pairs, so each K/V tile is loaded once per KV-head group and serves all its query heads (grouped-query
attention). It walks keys in tiles of BLOCK_N positions; each key's physical slot comes from its own block-table
entry (``table[pos // block_size]``), so BLOCK_N is independent of the cache block size (smaller, equal or a
multiple). Only the tiles a query tile can see are visited: up to its last query's position (causal), and with a
sliding window from its first query's position - window + 1 (tiles wholly outside the window are skipped, not
masked). Scores are fp32 (``tl.dot`` with fp32 accumulation; IEEE precision, not TF32, for fp32 inputs),
softmax in base 2, output divided by the running sum at the end and stored in q's dtype. Head dims that are not
a power of two are padded with masks.

Grid: ``(T // BLOCK_Q + B, Hkv)``. Sequence b owns the programs ``cu[b] // BLOCK_Q + b`` up to
``cu[b+1] // BLOCK_Q + b + 1`` (at least ``ceil(q_len_b / BLOCK_Q)`` of them); a program finds its sequence by a
binary search over ``cu_seqlens_q`` and exits at once when its tile starts past the sequence's last query. A
decode thus costs one program (per KV head), a long chunk ``ceil(q_len / BLOCK_Q)``, and at most about
``T / BLOCK_Q`` programs exit empty, whatever the mix; the grid depends on shapes only (no host read of tensor
values), so a launch can be captured in a CUDA graph (the caller preallocates ``out``; compile the kernel by one
eager call before capture). Tiles on a GPU (``_tiles``): BLOCK_M = 16 rows when every query tile fits in 16 rows
(decode-only batches: the decode-specialised tile) or for fp32, else 64; BLOCK_N = 64 keys (32 for fp32 or
head_dim > 128). The interpreter uses 16 x 16 tiles.

Verified: results under ``TRITON_INTERPRET=1`` on the CPU only (tests/test_triton_attention.py, against a dense
float64 reference, including the GPU tile shapes); compiled to a cubin for sm_90 without a GPU (same file), and
ptxas reported no register spills for the GPU tiles at head_dim 64/128 (256: bf16 64 x 32). This kernel has NEVER
RUN on a GPU in the session that wrote it: its results there, its speed and the tile choices are unmeasured, and
a split-KV variant for long-context decodes with few sequences is not written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _kernel_fn(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, ctx_ptr, tables_ptr,
    num_seqs, scale_log2, window,
    stride_qt, stride_qh, stride_kb, stride_ko, stride_kh, stride_vb, stride_vo, stride_vh,
    stride_ot, stride_oh, stride_tb,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    USE_WINDOW: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Which sequence owns this program: the last b with cu[b] // BLOCK_Q + b <= pid.
    # Typed, so the literal 0 starts an int32 loop-carried value rather than a compile-time constant.
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_q_ptr + mid) // BLOCK_Q + mid <= pid:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    q_beg = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_beg
    q_first = (pid - (q_beg // BLOCK_Q + seq)) * BLOCK_Q  # first query (within the sequence) of this tile
    if q_first >= q_len:
        return
    ctx = tl.load(ctx_ptr + seq)
    first_pos = ctx - q_len  # position of the sequence's first query

    rows = tl.arange(0, BLOCK_M)
    tok = q_first + rows // GROUP_PAD  # [BLOCK_M] query index within the sequence
    grp = rows % GROUP_PAD
    row_ok = (tok < q_len) & (grp < GROUP)
    head = kv_head * GROUP + grp  # [BLOCK_M] query head
    dims = tl.arange(0, D_PAD)
    dim_ok = dims < HEAD_DIM
    q_rows = (q_beg + tok).to(tl.int64) * stride_qt + head * stride_qh  # [BLOCK_M]
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    # [BLOCK_M, D_PAD]; Triton's interpreter computes bf16 dots on raw bits (numpy has no bf16): fp32 there.
    q = q.to(tl.float32 if UPCAST else k_ptr.dtype.element_ty)
    pos = first_pos + tok  # [BLOCK_M] query positions

    # Keys this tile can see: causal up to its last query, windowed from its first query.
    k_end = first_pos + tl.minimum(q_first + BLOCK_Q, q_len)  # exclusive
    k_start = 0
    if USE_WINDOW:
        k_start = tl.maximum(first_pos + q_first - window + 1, 0) // BLOCK_N * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    table_row = tables_ptr + seq.to(tl.int64) * stride_tb
    for start in range(k_start, k_end, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        key_ok = kpos < k_end
        # Table entries past the context (padding, arbitrary) are never read: masked loads, block 0 instead.
        block = tl.load(table_row + kpos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        slot_k = block * stride_kb + (kpos % BLOCK_SIZE) * stride_ko + kv_head * stride_kh  # [BLOCK_N]
        slot_v = block * stride_vb + (kpos % BLOCK_SIZE) * stride_vo + kv_head * stride_vh
        kt = tl.load(k_ptr + slot_k[None, :] + dims[:, None], mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
        kt = kt.to(q.dtype)  # [D_PAD, BLOCK_N]
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")  # [BLOCK_M, BLOCK_N]
        else:
            s = tl.dot(q, kt)
        s = s * scale_log2
        visible = (kpos[None, :] <= pos[:, None]) & key_ok[None, :]
        if USE_WINDOW:
            visible = visible & (pos[:, None] - kpos[None, :] < window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet stay at zero
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + slot_v[:, None] + dims[None, :], mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        v = v.to(q.dtype)  # [BLOCK_N, D_PAD]
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_rows = (q_beg + tok).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(o_ptr + o_rows[:, None] + dims[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


# Compiled, or interpreted on the CPU when TRITON_INTERPRET=1 was set before triton was first imported (the
# interpreter needs triton.language itself built that way, so it cannot be switched on later).
# num_seqs unspecialised: one compiled variant serves every batch size (else 1, multiples of 16 and the rest
# would each compile, e.g. once per CUDA-graph bucket).
_KERNEL = triton.jit(_kernel_fn, do_not_specialize=["num_seqs"])


def _check_device(device: torch.device) -> None:
    from triton.runtime.interpreter import InterpretedFunction

    if device.type == "cpu" and not isinstance(_KERNEL, InterpretedFunction):
        raise RuntimeError("model.attention=triton on the CPU runs only under Triton's interpreter: set the "
                           "environment variable TRITON_INTERPRET=1 before Python starts (slow; tests only), "
                           "or use model.attention=sdpa")


def check_block_size(block_size: int) -> None:
    """Raise ValueError unless ``block_size`` is a power of two >= 16 (what the kernel's tiles need)."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"cache.block_size={block_size}: the triton attention backend needs a power of two >= 16 "
                         "(16, 32, 64, ...); set cache.block_size accordingly")


def _tiles(device: torch.device, max_q: int, group_pad: int, d_pad: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps). GPU values: chosen from ptxas register/spill reports for sm_90 (no spills
    for 16- and 64-row bf16/fp16 tiles at head_dim 128; fp32 64x64 tiles spill, so fp32 gets 16x32), never timed."""
    if device.type == "cpu":  # the interpreter: few, small programs (numpy per op)
        return max(16, group_pad), 16, 1
    fp32 = dtype == torch.float32
    rows = 64 if max_q * group_pad > 16 and not fp32 else 16
    block_n = 32 if fp32 or d_pad > 128 else 64
    return max(rows, group_pad), block_n, 4


def paged_attention(q, k_cache, v_cache, *, cu_seqlens_q, context_lens, block_tables, max_q, scale,
                    window=None, out=None) -> torch.Tensor:
    """Causal (optionally sliding-window) attention of a packed micro-batch over the paged KV cache.

    q [T, Hq, D] (packed queries of B sequences, back to back); k_cache, v_cache [num_blocks, block_size, Hkv, D];
    cu_seqlens_q [B+1] int32 (query start offsets, cu[0]=0, cu[B]=T); context_lens [B] int32 (cached prefix + the
    sequence's own new tokens, whose K/V are already written into the cache); block_tables [B, W] int32 (physical
    block of each logical block; W >= ceil(max context / block_size); padding entries arbitrary); max_q: python
    int, the longest query (picks the tile shape only, so no host sync); scale: softmax scale; window: None or int
    (a query at position p sees keys at positions k with k <= p and p - k < window, transformers'
    sliding-window rule). Query i of sequence b (0-based within it) sits at position context_lens[b] - q_len_b + i.
    Every sequence needs context_lens[b] >= q_len_b (q_len_b == 0, padding, costs one empty program). Returns
    [T, Hq, D] in q.dtype (written into ``out`` if given; rows past cu[B] are left untouched). The last dimension
    of q, the caches and out must be contiguous; any other strides are fine. block_size must be a power of two
    >= 16 (ValueError naming cache.block_size otherwise). CPU tensors need TRITON_INTERPRET=1 set before triton's
    first import (RuntimeError otherwise).
    """
    _check_device(q.device)
    t, hq, d = q.shape
    num_blocks, block_size, hkv, d_k = k_cache.shape
    check_block_size(block_size)
    if v_cache.shape != k_cache.shape or d_k != d or hq % hkv:
        raise ValueError(f"paged_attention: q {tuple(q.shape)} and caches {tuple(k_cache.shape)}/"
                         f"{tuple(v_cache.shape)} disagree (need equal caches, the same head_dim, Hq % Hkv == 0)")
    if window is not None and window < 1:
        raise ValueError(f"paged_attention: window={window} must be None or >= 1")
    if out is None:
        out = q.new_empty(q.shape)  # contiguous even when q is a transposed view (the caller reshapes it)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"paged_attention: out {tuple(out.shape)} {out.dtype} must match q {tuple(q.shape)} {q.dtype}")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if x.stride(-1) != 1:
            raise ValueError(f"paged_attention: {name} needs a contiguous last (head_dim) dimension")
    num_seqs = cu_seqlens_q.shape[0] - 1
    if t == 0 or num_seqs == 0:
        return out
    group = hq // hkv
    group_pad = triton.next_power_of_2(group)
    d_pad = max(16, triton.next_power_of_2(d))
    block_m, block_n, num_warps = _tiles(q.device, max_q, group_pad, d_pad, k_cache.dtype)
    block_q = block_m // group_pad
    grid = (t // block_q + num_seqs, hkv)
    _KERNEL[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables,
        num_seqs, scale * 1.4426950408889634, 0 if window is None else int(window),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0),
        HEAD_DIM=d, D_PAD=d_pad, GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_SIZE=block_size, USE_WINDOW=window is not None, IEEE=k_cache.dtype == torch.float32,
        UPCAST=k_cache.dtype == torch.bfloat16 and q.device.type == "cpu",
        num_warps=num_warps,
    )
    return out
