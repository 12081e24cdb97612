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

Split-KV (flash-decoding): when the programs above would leave SMs idle while each walks a long context (few
decodes at long contexts, or a short prefill chunk behind a long prefix), each program's keys are split over
``num_splits`` programs (grid axis 2) that write unnormalised partials, merged by a second launch (``split_count``).

Verified: results under ``TRITON_INTERPRET=1`` on the CPU (tests/test_triton_attention.py, against a dense
float64 reference, including the GPU tile shapes, split or not); compiled to a cubin for sm_90 without a GPU (same
file), ptxas reporting no register spills for the GPU tiles at head_dim 64/128 (256: bf16 64 x 32). On an H200
(2026-11-30) the GPU-marked tests passed (greedy fp32 equality with Hugging Face on 1 and 2 stages, graphs on and
off) and the chunk times per prefix are in docs/BENCHMARKS.md; the tile choices are still not tuned.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch
import triton
import triton.language as tl

from stages.attention import AttentionBackend
from stages.inputs import StageInputs


def _kernel_fn(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, ctx_ptr, tables_ptr, part_ptr, ml_ptr,
    num_seqs, num_splits, scale_log2, window,
    stride_qt, stride_qh, stride_kb, stride_ko, stride_kh, stride_vb, stride_vo, stride_vh,
    stride_ot, stride_oh, stride_tb, stride_ps, stride_pt, stride_ph, stride_ms, stride_mt,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    USE_WINDOW: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

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

    # Split-KV: this program walks only its share of the visible key tiles (num_splits == 1: all of them).
    per_split = tl.cdiv(tl.cdiv(k_end - k_start, BLOCK_N), num_splits) * BLOCK_N
    k_lo = k_start + split * per_split
    k_hi = tl.minimum(k_lo + per_split, k_end)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    table_row = tables_ptr + seq.to(tl.int64) * stride_tb
    for start in range(k_lo, k_hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        key_ok = kpos < k_hi
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

    if SPLIT:  # unnormalised partials, merged by _combine_fn
        prow = (q_beg + tok).to(tl.int64)
        p_rows = split.to(tl.int64) * stride_ps + prow * stride_pt + head * stride_ph
        tl.store(part_ptr + p_rows[:, None] + dims[None, :], acc, mask=row_ok[:, None] & dim_ok[None, :])
        m_rows = split.to(tl.int64) * stride_ms + prow * stride_mt + head * 2
        tl.store(ml_ptr + m_rows, m_i, mask=row_ok)
        tl.store(ml_ptr + m_rows + 1, l_i, mask=row_ok)
        return
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_rows = (q_beg + tok).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(o_ptr + o_rows[:, None] + dims[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


def _combine_fn(
    part_ptr, ml_ptr, o_ptr, cu_q_ptr, num_seqs, num_splits,
    stride_ps, stride_pt, stride_ph, stride_ms, stride_mt, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """Merge the split-KV partials of one (query row, query head): softmax-weighted by each split's max."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    if row >= tl.load(cu_q_ptr + num_seqs):
        return
    s = tl.arange(0, SPLITS_PAD)
    s_ok = s < num_splits
    m_at = s.to(tl.int64) * stride_ms + row * stride_mt + head * 2
    m = tl.load(ml_ptr + m_at, mask=s_ok, other=float("-inf"))  # [SPLITS_PAD], log2 units
    l_sum = tl.load(ml_ptr + m_at + 1, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)  # finite: every query sees at least its own key, in some split
    w = tl.where(m > float("-inf"), tl.exp2(m - m_max), 0.0)  # splits that saw no key weigh nothing
    dims = tl.arange(0, D_PAD)
    dim_ok = dims < HEAD_DIM
    p_at = s.to(tl.int64)[:, None] * stride_ps + row * stride_pt + head * stride_ph + dims[None, :]
    acc = tl.load(part_ptr + p_at, mask=s_ok[:, None] & dim_ok[None, :], other=0.0)  # [SPLITS_PAD, D_PAD]
    o = tl.sum(acc * w[:, None], 0) / tl.sum(w * l_sum, 0)
    tl.store(o_ptr + row * stride_ot + head * stride_oh + dims, o.to(o_ptr.dtype.element_ty), mask=dim_ok)


# Arguments whose values change from one micro-batch to the next are not specialised, so that one compiled
# variant per tile configuration serves a whole run (no compile after warm-up). Triton otherwise specialises an
# int on == 1 and % 16 == 0 (the batch size, the block-table width, the partials' strides, a window of 1) and a
# pointer on 16-byte alignment: the index arrays are views into one packed buffer (stages/inputs.py), at offsets
# that change with the micro-batch. Data pointers and the model's own strides stay specialised (aligned loads).
_INTS = ("num_seqs", "num_splits", "window", "stride_tb", "stride_ps", "stride_ms")
_POINTERS = ("cu_q_ptr", "ctx_ptr", "tables_ptr", "part_ptr", "ml_ptr")
_COMBINE_INTS = ("num_seqs", "num_splits", "stride_ps", "stride_ms")
_COMBINE_POINTERS = ("cu_q_ptr", "part_ptr", "ml_ptr")


def _jit(fn, ints: tuple[str, ...], pointers: tuple[str, ...]):
    # Compiled, or interpreted on the CPU when TRITON_INTERPRET=1 was set before triton was first imported (the
    # interpreter needs triton.language itself built that way, so it cannot be switched on later). Triton >= 3.3
    # has do_not_specialize_on_alignment for pointers; before it, do_not_specialize covered pointers too.
    if "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters:
        return triton.jit(fn, do_not_specialize=list(ints), do_not_specialize_on_alignment=list(pointers))
    return triton.jit(fn, do_not_specialize=list(ints + pointers))


_KERNEL = _jit(_kernel_fn, _INTS, _POINTERS)
_COMBINE = _jit(_combine_fn, _COMBINE_INTS, _COMBINE_POINTERS)

# Split-KV (flash-decoding): when few (query tile, KV head) programs would each walk a long context alone -- a few
# decodes, or a short prefill chunk behind a long prefix -- their keys are split over several programs and the
# partials merged by a second launch. Thresholds chosen by reasoning: contexts from SPLIT_MIN_CONTEXT keys, splits
# of at least SPLIT_MIN_KEYS keys, only when the programs are fewer than the SMs, then enough to give every SM two,
# at most MAX_SPLITS. On an H200 a 40-token chunk at a 32k prefix (Llama-3.1-8B shape, 8 KV heads: about 24
# programs) took 42 ms unsplit against 24 ms for a 512-token chunk at prefix 0 (docs/BENCHMARKS.md, issue 17 on
# the GPU).
SPLIT_MIN_CONTEXT = 1024
SPLIT_MIN_KEYS = 256
MAX_SPLITS = 16


def split_count(*, max_context: int | None, programs: int, sm_count: int) -> int:
    """How many key splits a launch uses: 1 unless contexts reach SPLIT_MIN_CONTEXT keys and ``programs`` (the
    working (query tile, KV head) programs, ``active_programs``) are fewer than the SMs; then enough splits for
    two programs per SM. Host ints only, so the choice never reads the device and a CUDA graph of a bucket always
    captures the same launch grid."""
    if max_context is None or max_context < SPLIT_MIN_CONTEXT or programs >= sm_count:
        return 1
    fill = -(-2 * sm_count // max(programs, 1))
    return max(1, min(fill, max_context // SPLIT_MIN_KEYS, MAX_SPLITS))


def active_programs(*, num_tokens: int, num_seqs: int, max_q: int, block_q: int, hkv: int) -> int:
    """An upper bound, from host ints, of the programs of a launch that have queries: every sequence has at most
    ``ceil(max_q / block_q)`` query tiles, and the grid at most ``num_tokens // block_q + num_seqs`` of them.
    A decode-only micro-batch: ``num_seqs x hkv``."""
    return hkv * min(num_tokens // block_q + num_seqs, num_seqs * -(-max_q // block_q))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a stand-in so the CPU tests take the split path as a GPU would


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device and its current stream: make that the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_device(device: torch.device) -> None:
    from triton.runtime.interpreter import InterpretedFunction

    if device.type == "cpu" and not isinstance(_KERNEL, InterpretedFunction):
        raise RuntimeError("model.attention=triton on the CPU runs only under Triton's interpreter: set the "
                           "environment variable TRITON_INTERPRET=1 before Python starts (slow; tests only), "
                           "or use model.attention=sdpa")


def check_block_size(block_size: int) -> None:
    """Raise ValueError unless ``block_size`` is a power of two >= 16 (what the kernel's tiles need)."""
    problem = _block_size_problem(block_size)
    if problem:
        raise ValueError(problem)


def _block_size_problem(block_size: int) -> str | None:
    if block_size < 16 or block_size & (block_size - 1):
        return (f"model.attention=triton needs cache.block_size a power of two >= 16 (got {block_size}); set "
                "cache.block_size=16, or use model.attention=sdpa")
    return None


def _device_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("model.attention=triton on the CPU runs only under Triton's interpreter (slow, for tests): set "
                "TRITON_INTERPRET=1 in the environment, or use model.attention=sdpa")
    return None


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
                    window=None, out=None, max_context=None, num_splits=None) -> torch.Tensor:
    """Causal (optionally sliding-window) attention of a packed micro-batch over the paged KV cache.

    q [T, Hq, D] (packed queries of B sequences, back to back); k_cache, v_cache [num_blocks, block_size, Hkv, D];
    cu_seqlens_q [B+1] int32 (query start offsets, cu[0]=0, cu[B]=T); context_lens [B] int32 (cached prefix + the
    sequence's own new tokens, whose K/V are already written into the cache); block_tables [B, W] int32 (physical
    block of each logical block; W >= ceil(max context / block_size); padding entries arbitrary); max_q: python
    int, the longest query (picks the tile shape only, so no host sync); scale: softmax scale; window: None or int
    (a query at position p sees keys at positions k with k <= p and p - k < window, transformers'
    sliding-window rule). Query i of sequence b (0-based within it) sits at position context_lens[b] - q_len_b + i.
    Every sequence needs context_lens[b] >= q_len_b (q_len_b == 0, padding, costs one empty program). max_context:
    python int, an upper bound of context_lens (None: unknown, never split); num_splits: key splits per program
    (None: ``split_count``'s choice; > 1 splits any micro-batch, decodes or not). Returns [T, Hq, D] in q.dtype
    (written into ``out`` if given; rows past cu[B] are left untouched). The last dimension of q, the caches and
    out must be contiguous; any other strides are fine. block_size must be a power of two >= 16 (ValueError naming
    cache.block_size otherwise). CPU tensors need TRITON_INTERPRET=1 set before triton's first import
    (RuntimeError otherwise). Launches on q's device (its current stream), whatever the current device.
    """
    if out is None:
        out = q.new_empty(q.shape)  # contiguous even when q is a transposed view (the caller reshapes it)
    launches = _launches(q, k_cache, v_cache, out, cu_seqlens_q=cu_seqlens_q, context_lens=context_lens,
                         block_tables=block_tables, max_q=max_q, scale=scale, window=window, max_context=max_context,
                         num_splits=num_splits)
    with _on_device(q.device):
        for kernel, grid, args, meta in launches:
            kernel[grid](*args, **meta)
    return out


def _launches(q, k_cache, v_cache, out, *, cu_seqlens_q, context_lens, block_tables, max_q, scale, window,
              max_context, num_splits) -> list[tuple]:
    """Checks, then the launches of one call as ``(kernel, grid, args, meta)`` (also what the tests read to see
    which arguments reach Triton's specialisation)."""
    _check_device(q.device)
    t, hq, d = q.shape
    num_blocks, block_size, hkv, d_k = k_cache.shape
    check_block_size(block_size)
    if v_cache.shape != k_cache.shape or d_k != d or hq % hkv:
        raise ValueError(f"paged_attention: q {tuple(q.shape)} and caches {tuple(k_cache.shape)}/"
                         f"{tuple(v_cache.shape)} disagree (need equal caches, the same head_dim, Hq % Hkv == 0)")
    if window is not None and window < 1:
        raise ValueError(f"paged_attention: window={window} must be None or >= 1")
    if out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"paged_attention: out {tuple(out.shape)} {out.dtype} must match q {tuple(q.shape)} {q.dtype}")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if x.stride(-1) != 1:
            raise ValueError(f"paged_attention: {name} needs a contiguous last (head_dim) dimension")
    num_seqs = cu_seqlens_q.shape[0] - 1
    if t == 0 or num_seqs == 0:
        return []
    group = hq // hkv
    group_pad = triton.next_power_of_2(group)
    d_pad = max(16, triton.next_power_of_2(d))
    block_m, block_n, num_warps = _tiles(q.device, max_q, group_pad, d_pad, k_cache.dtype)
    block_q = block_m // group_pad
    if num_splits is None:
        programs = active_programs(num_tokens=t, num_seqs=num_seqs, max_q=max_q, block_q=block_q, hkv=hkv)
        num_splits = split_count(max_context=max_context, programs=programs, sm_count=_sm_count(q.device))
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"paged_attention: num_splits={num_splits} must be in 1..{MAX_SPLITS}")
    split = num_splits > 1
    if split:
        part = torch.empty(num_splits, t, hq, d, dtype=torch.float32, device=q.device)  # unnormalised outputs
        ml = torch.empty(num_splits, t, hq, 2, dtype=torch.float32, device=q.device)  # running max, sum (log2)
        part_strides = (part.stride(0), part.stride(1), part.stride(2), ml.stride(0), ml.stride(1))
    else:
        part, ml, part_strides = out, out, (0, 0, 0, 0, 0)
    ieee = k_cache.dtype == torch.float32
    main = (_KERNEL, (t // block_q + num_seqs, hkv, num_splits), (
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables, part, ml,
        num_seqs, num_splits, scale * 1.4426950408889634, 0 if window is None else int(window),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0), *part_strides,
    ), dict(HEAD_DIM=d, D_PAD=d_pad, GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_SIZE=block_size, USE_WINDOW=window is not None, IEEE=ieee,
            UPCAST=k_cache.dtype == torch.bfloat16 and q.device.type == "cpu", SPLIT=split, num_warps=num_warps))
    if not split:
        return [main]
    combine = (_COMBINE, (t, hq), (part, ml, out, cu_seqlens_q, num_seqs, num_splits, *part_strides,
                                   out.stride(0), out.stride(1)),
               dict(HEAD_DIM=d, D_PAD=d_pad, SPLITS_PAD=MAX_SPLITS, num_warps=1 if q.device.type == "cpu" else 4))
    return [main, combine]


def prepare(inputs: StageInputs) -> None:
    """The kernel reads ``StageInputs`` as they are: no per-micro-batch metadata."""
    return None


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx, *, scale: float,
           window: int | None) -> torch.Tensor:
    """The backend's call: q ``[T, Hq, D]`` -> ``[T, Hq, D]`` for the micro-batch in ``ctx.inputs``."""
    x: StageInputs = ctx.inputs
    return paged_attention(q, k_cache, v_cache, cu_seqlens_q=x.cu_seqlens_q, context_lens=x.context_lens,
                           block_tables=x.block_tables, max_q=x.max_q, scale=scale, window=window,
                           max_context=x.max_context)


# Capturable: the launch grid comes from tensor shapes and host ints (max_q, max_context) only.
BACKEND = AttentionBackend("triton", prepare, attend, capturable=True, check_device=_device_problem,
                           check_block_size=_block_size_problem)
