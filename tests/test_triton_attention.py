"""The Triton paged-attention kernel against a dense float64 reference (Triton's interpreter when there is no GPU)."""

import os

import torch

if not torch.cuda.is_available():  # must precede the first triton import (tests/conftest.py sets it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton")
from stages.attention import triton_paged  # noqa: E402
from stages.attention.triton_paged import paged_attention  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GARBAGE = 1e4  # every cache slot no sequence owns; reading one would swamp the softmax
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def make_batch(seqs, *, hkv, group, head_dim, block_size, dtype=torch.float32, spare_blocks=3, pad=2, seed=0,
               share_prefix=False):
    """Random packed micro-batch over a shuffled paged cache. ``seqs``: (cached prefix, query length) each.

    Slots outside every sequence's context, and the table's padding entries, point at garbage.
    """
    gen = torch.Generator().manual_seed(seed)
    ctxs = [cached + q_len for cached, q_len in seqs]
    needs = [-(-c // block_size) for c in ctxs]
    num_blocks = sum(needs) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(needs) + pad
    tables, used = [], 0
    for need in needs:
        fill = torch.randint(0, num_blocks, (width - need,), generator=gen).tolist()  # padding: arbitrary
        tables.append(perm[used:used + need] + fill)
        used += need
    if share_prefix:  # later sequences reuse the first sequence's first block (a shared prefix)
        for table, need in zip(tables[1:], needs[1:]):
            table[0] = tables[0][0] if needs[0] else table[0]
    shape = (num_blocks, block_size, hkv, head_dim)
    k = torch.full(shape, GARBAGE, dtype=torch.float64)
    v = torch.full(shape, -GARBAGE, dtype=torch.float64)
    for table, ctx in zip(tables, ctxs):
        for pos in range(ctx):
            k[table[pos // block_size], pos % block_size] = torch.randn(hkv, head_dim, generator=gen)
            v[table[pos // block_size], pos % block_size] = torch.randn(hkv, head_dim, generator=gen)
    total = sum(q_len for _, q_len in seqs)
    q = torch.randn(total, hkv * group, head_dim, generator=gen, dtype=torch.float64)
    cu = [0]
    for _, q_len in seqs:
        cu.append(cu[-1] + q_len)
    i32 = dict(dtype=torch.int32, device=DEVICE)
    return dict(q=q.to(DEVICE, dtype), k_cache=k.to(DEVICE, dtype), v_cache=v.to(DEVICE, dtype),
                cu_seqlens_q=torch.tensor(cu, **i32), context_lens=torch.tensor(ctxs, **i32),
                block_tables=torch.tensor(tables, **i32), max_q=max(q_len for _, q_len in seqs))


def reference(q, k_cache, v_cache, *, cu_seqlens_q, context_lens, block_tables, max_q, scale, window=None,
              max_context=None):
    """Per sequence: gather its blocks into dense K/V, causal (+window) mask, softmax in float64."""
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // hkv
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(len(context_lens)):
        beg, end, ctx = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(context_lens[b])
        blocks = block_tables[b, :-(-ctx // block_size)].long().cpu()
        k = k_cache.cpu().double()[blocks].flatten(0, 1)[:ctx].repeat_interleave(group, 1)  # [ctx, Hq, D]
        v = v_cache.cpu().double()[blocks].flatten(0, 1)[:ctx].repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q[beg:end].cpu().double(), k) * scale  # [Hq, q_len, ctx]
        q_pos = torch.arange(ctx - (end - beg), ctx)[:, None]
        k_pos = torch.arange(ctx)[None, :]
        visible = k_pos <= q_pos
        if window is not None:
            visible &= q_pos - k_pos < window
        out[beg:end] = torch.einsum("hqk,khd->qhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)
    return out


def check(batch, *, scale=0.3, window=None, dtype=torch.float32):
    got = paged_attention(**batch, scale=scale, window=window)
    assert got.dtype == batch["q"].dtype and got.shape == batch["q"].shape
    want = reference(**batch, scale=scale, window=window)
    torch.testing.assert_close(got.cpu().double(), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_single_decode():
    check(make_batch([(36, 1)], hkv=2, group=2, head_dim=16, block_size=16))


def test_fresh_prefill():
    check(make_batch([(0, 23)], hkv=1, group=2, head_dim=16, block_size=16))


def test_chunk_with_cached_prefix_longer_than_a_block():
    check(make_batch([(35, 21)], hkv=2, group=1, head_dim=16, block_size=16))


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [16, 32])
def test_mixed_batch_gqa_and_block_sizes(group, block_size):
    check(make_batch([(40, 1), (0, 19), (17, 1), (33, 7)], hkv=2, group=group, head_dim=16, block_size=block_size))


# window 16 at position 46: its oldest visible key (31) is the last of a 16-key tile, the one an off-by-one
# in the skipped-tile arithmetic would drop.
@pytest.mark.parametrize("window", [1, 5, 16, 17])
def test_sliding_window(window):
    check(make_batch([(50, 1), (46, 1), (30, 13), (0, 20)], hkv=1, group=2, head_dim=16, block_size=16), window=window)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    batch = make_batch([(20, 1), (9, 12)], hkv=2, group=2, head_dim=16, block_size=16, dtype=dtype)
    check(batch, dtype=dtype)


def test_head_dim_not_a_power_of_two():
    check(make_batch([(18, 1), (5, 9)], hkv=1, group=3, head_dim=12, block_size=16))


@pytest.mark.parametrize("tiles", [(16, 64, 1), (64, 16, 1), (64, 64, 4)])
def test_gpu_tile_shapes(monkeypatch, tiles):
    # The GPU's tiles (BLOCK_N a multiple of, or smaller than, the cache block) run the same code: check them here.
    monkeypatch.setattr(triton_paged, "_tiles", lambda *args: tiles)
    check(make_batch([(70, 1), (25, 40), (0, 3)], hkv=2, group=2, head_dim=16, block_size=32), window=30)
    check(make_batch([(70, 1), (25, 40)], hkv=1, group=4, head_dim=16, block_size=16))


def test_writes_into_out_and_leaves_padding_rows():
    # Also a sequence with no query (q_len 0), which a caller may use as padding: it must write nothing.
    batch = make_batch([(10, 1), (7, 0), (0, 5)], hkv=1, group=2, head_dim=16, block_size=16)
    q = batch["q"]
    out = torch.full((q.shape[0] + 3, *q.shape[1:]), 7.0, device=DEVICE)  # a static buffer larger than T
    batch["q"] = torch.cat([q, torch.zeros_like(out[:3])])  # padded rows past cu[B], as a CUDA graph bucket has
    got = paged_attention(**batch, scale=0.3, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert bool((out[q.shape[0]:] == 7.0).all())
    batch["q"] = q
    torch.testing.assert_close(out[:q.shape[0]].cpu().double(), reference(**batch, scale=0.3), atol=1e-4, rtol=1e-4)


def _splits_used(batch, **kwargs) -> int:
    """The key splits ``paged_attention`` launches with for ``batch`` (1: one launch, no merge)."""
    out = torch.empty_like(batch["q"])
    (_, grid, _, _), *merge = triton_paged._launches(batch["q"], batch["k_cache"], batch["v_cache"], out,
                                                     **{k: v for k, v in batch.items() if k not in ("q", "k_cache",
                                                                                                 "v_cache")},
                                                     scale=0.3, window=None, num_splits=None, **kwargs)
    assert len(merge) == (grid[2] > 1)
    return grid[2]


def test_split_count_rule():
    rule = triton_paged.split_count
    # Only long contexts, and only while the working programs leave SMs idle.
    assert rule(max_context=4096, programs=8, sm_count=132) == 16
    assert rule(max_context=1024, programs=8, sm_count=132) == 4  # at least 256 keys per split
    assert rule(max_context=4096, programs=512, sm_count=132) == 1  # the GPU is full already
    assert rule(max_context=32768, programs=256, sm_count=132) == 1  # one wave or more: a merge costs more
    assert rule(max_context=32768, programs=131, sm_count=132) == 3
    assert rule(max_context=1023, programs=1, sm_count=132) == 1
    assert rule(max_context=None, programs=1, sm_count=132) == 1
    assert rule(max_context=32768, programs=24, sm_count=132) == 11  # a short chunk behind a long prefix


def test_active_programs_count_query_tiles_not_the_padded_grid():
    count = triton_paged.active_programs
    # Decodes: one tile per sequence, whatever the grid's spare programs.
    assert count(num_tokens=8, num_seqs=8, max_q=1, block_q=4, hkv=8) == 64
    # One 40-token chunk (Llama-3.1-8B on a GPU: 16 query rows per tile of 64 for a group of 4): 3 tiles x 8.
    assert count(num_tokens=40, num_seqs=1, max_q=40, block_q=16, hkv=8) == 24
    # A chunk and decodes: bounded by the grid, not by num_seqs x the longest's tiles.
    assert count(num_tokens=512 + 30, num_seqs=31, max_q=512, block_q=16, hkv=8) == 8 * (542 // 16 + 31)
    # A long prefill chunk fills the GPU: no split.
    programs = count(num_tokens=2048, num_seqs=1, max_q=2048, block_q=16, hkv=8)
    assert triton_paged.split_count(max_context=32768, programs=programs, sm_count=132) == 1


def test_a_short_chunk_behind_a_long_prefix_is_split_and_exact():
    # Few query tiles over thousands of keys: the rule splits them (prefill as well as decodes), merge exact.
    batch = make_batch([(2988, 12), (40, 1)], hkv=1, group=2, head_dim=16, block_size=16, spare_blocks=1)
    batch["max_context"] = 3000
    assert _splits_used(batch) > 1
    check(batch, scale=0.25)
    check(batch, scale=0.25, window=700)


def test_split_kv_long_decodes_match_dense():
    # Contexts of a few thousand keys, chosen by the rule (max_context known): the merge must be exact.
    batch = make_batch([(2999, 1), (1500, 1), (40, 1)], hkv=1, group=2, head_dim=16, block_size=16, spare_blocks=1)
    batch["max_context"] = 3000
    assert _splits_used(batch) > 1
    check(batch, scale=0.25)
    check(batch, scale=0.25, window=700)


@pytest.mark.parametrize("num_splits", [2, 7])
def test_forced_split_kv_on_a_mixed_batch(num_splits):
    # Any split count on any mix (chunks, decodes, a sequence with no query, windows) gives the dense result, and
    # rows past cu[B] stay untouched by the merge.
    batch = make_batch([(700, 1), (130, 37), (9, 0), (0, 20)], hkv=2, group=2, head_dim=16, block_size=32)
    q = batch["q"]
    out = torch.full((q.shape[0] + 2, *q.shape[1:]), 7.0, device=DEVICE)
    batch["q"] = torch.cat([q, torch.zeros_like(out[:2])])
    for window in (None, 50):
        paged_attention(**batch, scale=0.3, window=window, out=out, num_splits=num_splits)
        assert bool((out[q.shape[0]:] == 7.0).all())
        want = reference(**{**batch, "q": q}, scale=0.3, window=window)
        torch.testing.assert_close(out[:q.shape[0]].cpu().double(), want, atol=1e-4, rtol=1e-4)


def test_split_kv_half_precision():
    batch = make_batch([(1300, 1), (20, 1)], hkv=1, group=4, head_dim=16, block_size=16, dtype=torch.bfloat16)
    got = paged_attention(**batch, scale=0.25, num_splits=5)
    want = reference(**batch, scale=0.25)
    torch.testing.assert_close(got.cpu().double(), want, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])


def test_one_compiled_variant_per_configuration_whatever_the_micro_batch():
    # No compile after warm-up: across random micro-batches, every constexpr configuration (tile shape, window on
    # or off, split or not) maps to exactly one runtime specialisation, so each compiles once.
    from scripts.gpu_variants import kernels, random_launches, specialisations

    calls = list(random_launches(150, seed=1, device=DEVICE))
    seen = specialisations(kernels(marked=True), calls)
    assert {name for name, _ in seen} == {"main", "combine"}  # split-KV launches were among them
    assert all(len(variants) == 1 for variants in seen.values()), {k[0]: len(v) for k, v in seen.items()}
    # Without the marks Triton would specialise on the values that change per micro-batch: the test can tell.
    assert max(len(variants) for variants in specialisations(kernels(marked=False), calls).values()) > 1


@pytest.mark.parametrize("block_size", [8, 24, 0])
def test_bad_block_size_raises(block_size):
    with pytest.raises(ValueError, match="cache.block_size"):
        triton_paged.check_block_size(block_size)
    k = torch.zeros(2, max(block_size, 1), 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="cache.block_size"):
        paged_attention(torch.zeros(1, 1, 16, device=DEVICE), k, k,
                        cu_seqlens_q=torch.tensor([0, 1], dtype=torch.int32, device=DEVICE),
                        context_lens=torch.tensor([1], dtype=torch.int32, device=DEVICE),
                        block_tables=torch.zeros(1, 1, dtype=torch.int32, device=DEVICE), max_q=1, scale=1.0)


# Chunk lengths: a decode, a prime, longer than a block; cached prefixes from none to several blocks.
_seq = st.tuples(st.integers(0, 50), st.one_of(st.just(1), st.sampled_from([7, 13, 37]), st.integers(1, 40)))


@settings(max_examples=40)
@given(seqs=st.lists(_seq, min_size=1, max_size=4), block_size=st.sampled_from([16, 32]),
       group=st.sampled_from([1, 2, 4]), hkv=st.sampled_from([1, 2]), head_dim=st.sampled_from([8, 16, 24]),
       window=st.one_of(st.none(), st.integers(1, 40)), share=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_micro_batches(seqs, block_size, group, hkv, head_dim, window, share, seed):
    batch = make_batch(seqs, hkv=hkv, group=group, head_dim=head_dim, block_size=block_size, seed=seed,
                       share_prefix=share)
    check(batch, scale=head_dim ** -0.5, window=window)


# Compiles the kernels for an H100 (sm_90) without a GPU: the interpreter does not type-check what the compiler does
# (loop-carried types, dot shapes). Pointers and strides marked 16-divisible as Triton's launcher marks them, except
# those the kernel asks it not to specialise (their values change per micro-batch). Arguments: dtype, BLOCK_M,
# BLOCK_N, head_dim, group, windowed, split-KV.
_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from stages.attention import triton_paged as tp
dt, bm, bn, d, group, win, split = sys.argv[1], *map(int, sys.argv[2:])
kept = set(tp._INTS + tp._POINTERS)
names = list(tp._KERNEL.arg_names)
def kind(n):
    if n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr"):
        return "*" + dt
    if n in ("part_ptr", "ml_ptr"):
        return "*fp32" if split else "*" + dt
    return "*i32" if n.endswith("_ptr") else "fp32" if n == "scale_log2" else "i32"
sig = {n: kind(n) for n in names if n.islower()}
gp = triton.next_power_of_2(group)
const = dict(HEAD_DIM=d, D_PAD=max(16, triton.next_power_of_2(d)), GROUP=group, GROUP_PAD=gp, BLOCK_Q=bm // gp,
             BLOCK_M=bm, BLOCK_N=bn, BLOCK_SIZE=16, USE_WINDOW=bool(win), IEEE=dt == "fp32", UPCAST=False,
             SPLIT=bool(split))
sig.update({n: "constexpr" for n in const})
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in kept and
         (n.endswith("_ptr") or n.startswith("stride"))}
opts = {"num_warps": 4, "num_stages": 3}
target = GPUTarget("cuda", 90, 32)
assert triton.compile(ASTSource(tp._KERNEL, sig, const, attrs), target=target, options=opts).asm["cubin"]
if split:
    names = list(tp._COMBINE.arg_names)
    sig = {n: ("*fp32" if n in ("part_ptr", "ml_ptr") else "*" + dt if n == "o_ptr" else "*i32" if
               n.endswith("_ptr") else "i32") for n in names if n.islower()}
    const = dict(HEAD_DIM=d, D_PAD=max(16, triton.next_power_of_2(d)), SPLITS_PAD=tp.MAX_SPLITS)
    sig.update({n: "constexpr" for n in const})
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in tp._COMBINE_INTS +
             tp._COMBINE_POINTERS and (n.endswith("_ptr") or n.startswith("stride"))}
    assert triton.compile(ASTSource(tp._COMBINE, sig, const, attrs), target=target, options=opts).asm["cubin"]
"""


@pytest.mark.parametrize("args", [("bf16", 64, 64, 128, 4, 1, 0), ("fp32", 16, 32, 80, 8, 0, 0),
                                  ("bf16", 16, 64, 128, 4, 0, 1)])
def test_compiles_for_h100(args):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE, *map(str, args)], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("no ptxas bundled with this triton")
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_shapes_on_gpu(dtype):
    seqs = [(600, 1)] * 24 + [(0, 300), (700, 129)]
    batch = make_batch(seqs, hkv=8, group=4, head_dim=128, block_size=16, dtype=dtype, spare_blocks=8)
    check(batch, scale=128 ** -0.5, window=None, dtype=dtype)
    check(batch, scale=128 ** -0.5, window=256, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_and_replay():
    batch = make_batch([(100, 1), (37, 1), (5, 1)], hkv=2, group=4, head_dim=64, block_size=16)
    out = torch.empty_like(batch["q"])
    paged_attention(**batch, scale=0.125, out=out)  # compiles before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_attention(**batch, scale=0.125, out=out)
    batch["q"].normal_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.cpu().double(), reference(**batch, scale=0.125), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_compile_after_warm_up_on_gpu():
    from scripts.gpu_variants import random_launches

    # 400 random bf16 micro-batches: Triton compiles one variant per kernel and constexpr configuration (tile
    # shape, window on/off, split or not), never one per micro-batch. Counted as growth of its compile cache.
    dev = torch.cuda.current_device()
    kernels = (("main", triton_paged._KERNEL), ("combine", triton_paged._COMBINE))
    before = {name: len(k.device_caches[dev][0]) for name, k in kernels}
    configs = {"main": set(), "combine": set()}
    for launches in random_launches(400, seed=2, device=DEVICE):
        for kernel, grid, args, meta in launches:
            name = "main" if kernel is triton_paged._KERNEL else "combine"
            configs[name].add((args[0].dtype, tuple(sorted(meta.items()))))
            with torch.cuda.device(args[0].device):
                kernel[grid](*args, **meta)
    torch.cuda.synchronize()
    for name, kernel in kernels:
        compiled = len(kernel.device_caches[dev][0]) - before[name]
        assert compiled <= len(configs[name]), (name, compiled, len(configs[name]))
