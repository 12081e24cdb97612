"""Paged attention on token-packed micro-batches against a dense causal reference over each whole sequence.

A schedule of micro-batches is run through ``paged_attention`` (the ``pp_paged`` function transformers calls, with
the sdpa backend) one after another, sharing one paged cache; every output row must equal what dense attention
over the full sequence gives at that position.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pp_runtime.plan import MicroBatch, Piece
from stages.attention import paged_attention, prepare, sdpa
from stages.inputs import build_stage_inputs
from stages.kv_cache import KVCache

HQ, HKV, D, BLOCK = 4, 2, 8, 4
LAYER = 3  # a global layer index that is not the cache's first local slot
CPU = torch.device("cpu")

# Sequence -> (total length, block table). Tables are scattered and block 0 is in use, so the zero padding of
# decode block tables points at real, foreign data that the mask must hide.
SEQS = {
    "A": (11, (7, 0, 5)),
    "B": (7, (2, 9)),
    "C": (2, (4,)),
    "D": (9, (1, 3, 6)),
}
# (sequence, start, tokens) per micro-batch, in order.
SCHEDULE = [
    # A's prompt split over two micro-batches; B's and D's whole prompts; C's one-token prompt (decode-like).
    [("A", 0, 6), ("B", 0, 5), ("C", 0, 1), ("D", 0, 8)],
    # A's second chunk next to decodes with contexts of 2, 1 and 3 blocks (padded decode tables).
    [("B", 5, 1), ("A", 6, 4), ("C", 1, 1), ("D", 8, 1)],
    [("A", 10, 1), ("B", 6, 1)],
]


def _hf_config():
    return SimpleNamespace(num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, hidden_size=HQ * D)


def _qkv(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sequence: q ``[HQ, L, D]``, k and v ``[HKV, L, D]`` for every position."""
    gen = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(HQ, n, D, generator=gen), torch.randn(HKV, n, D, generator=gen),
                   torch.randn(HKV, n, D, generator=gen)) for name, (n, _) in SEQS.items()}


def _dense_reference(q, k, v, *, window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """``[L, HQ, D]``: position i attends to j <= i (and i - j < window), kv heads repeated for GQA."""
    n = q.shape[1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    mask = j <= i
    if window is not None:
        mask &= (i - j) < window
    group = HQ // HKV
    k_rep = k.repeat_interleave(group, dim=0)  # query head h reads kv head h // group, as in HF repeat_kv
    v_rep = v.repeat_interleave(group, dim=0)
    out = F.scaled_dot_product_attention(q[None], k_rep[None], v_rep[None], attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)


def _context(mb: MicroBatch, cache: KVCache):
    inputs = build_stage_inputs(mb, block_size=cache.block_size, device=CPU)
    return prepare("sdpa", cache, inputs)


def _run_schedule(qkv, *, num_blocks: int = 10, **attn_kwargs) -> tuple[dict, KVCache]:
    """Run every micro-batch; returns {sequence: {position: output [HQ, D]}} and the cache."""
    cache = KVCache([0, LAYER], num_blocks=num_blocks, block_size=BLOCK, hf_config=_hf_config(),
                    dtype=torch.float32, device=CPU)
    module = SimpleNamespace(layer_idx=LAYER)
    outputs: dict[str, dict[int, torch.Tensor]] = {name: {} for name in SEQS}
    for mb_id, entries in enumerate(SCHEDULE):
        pieces = []
        for seq_id, (name, start, n) in enumerate(entries):
            length, table = SEQS[name]
            assert start + n <= length
            used = table[:-(-(start + n) // BLOCK)]  # the planner sends the blocks covering 0 .. start + n - 1
            pieces.append(Piece(seq_id=seq_id, start=start, token_ids=(0,) * n, block_table=used,
                                is_prefill=start == 0 or n > 1, sample=True))
        mb = MicroBatch(mb_id, tuple(pieces))
        ctx = _context(mb, cache)
        query = torch.cat([qkv[name][0][:, s:s + n] for name, s, n in entries], dim=1)[None]  # [1, HQ, T, D]
        key = torch.cat([qkv[name][1][:, s:s + n] for name, s, n in entries], dim=1)[None]  # [1, HKV, T, D]
        value = torch.cat([qkv[name][2][:, s:s + n] for name, s, n in entries], dim=1)[None]
        out, weights = paged_attention(module, query, key, value, None, pp_attn=ctx, **attn_kwargs)
        assert weights is None
        assert out.shape == (1, mb.num_tokens, HQ, D)
        row = 0
        for name, s, n in entries:
            for pos in range(s, s + n):
                outputs[name][pos] = out[0, row]
                row += 1
    return outputs, cache


def _assert_matches_dense(outputs, qkv, **ref_kwargs) -> None:
    for name, (length, _) in SEQS.items():
        ref = _dense_reference(*qkv[name], **ref_kwargs)
        assert sorted(outputs[name]) == list(range(length))
        got = torch.stack([outputs[name][pos] for pos in range(length)])
        torch.testing.assert_close(got, ref, msg=lambda m: f"sequence {name}: {m}")


def test_packed_chunks_and_decodes_match_dense_causal_attention():
    qkv = _qkv()
    outputs, _ = _run_schedule(qkv)
    _assert_matches_dense(outputs, qkv)


def test_explicit_scaling_is_used():
    qkv = _qkv(seed=1)
    outputs, _ = _run_schedule(qkv, scaling=0.9)
    _assert_matches_dense(outputs, qkv, scale=0.9)
    # And it matters: the default 1/sqrt(D) gives something else.
    default = _dense_reference(*qkv["A"])
    assert not torch.allclose(outputs["A"][9], default[9])


def test_keys_and_values_land_in_their_block_slots():
    qkv = _qkv(seed=2)
    _, cache = _run_schedule(qkv)
    k_cache, v_cache = cache.layer(LAYER)  # [blocks, BLOCK, HKV, D]
    for name, (length, table) in SEQS.items():
        _, k, v = qkv[name]
        for pos in range(length):
            block, offset = table[pos // BLOCK], pos % BLOCK
            torch.testing.assert_close(k_cache[block, offset], k[:, pos])
            torch.testing.assert_close(v_cache[block, offset], v[:, pos])
    # The other layer's cache is untouched.
    other_k, other_v = cache.layer(0)
    assert not other_k.any() and not other_v.any()


@pytest.mark.parametrize("window", [1, 3, 5])
def test_sliding_window_matches_dense_windowed_attention(window):
    qkv = _qkv(seed=3)
    outputs, _ = _run_schedule(qkv, sliding_window=window)
    _assert_matches_dense(outputs, qkv, window=window)


def test_window_longer_than_every_sequence_changes_nothing():
    qkv = _qkv(seed=4)
    windowed, _ = _run_schedule(qkv, sliding_window=64)
    _assert_matches_dense(windowed, qkv)


def test_window_actually_restricts_attention():
    qkv = _qkv(seed=5)
    outputs, _ = _run_schedule(qkv, sliding_window=3)
    full = _dense_reference(*qkv["A"])
    # Position 10 of A sees 8..10 only; full attention over 0..10 differs.
    assert not torch.allclose(outputs["A"][10], full[10])


def test_sdpa_split_slots_and_decode_tables():
    cache = KVCache([0], num_blocks=8, block_size=4, hf_config=_hf_config(), dtype=torch.float32, device=CPU)
    mb = MicroBatch(0, (
        Piece(seq_id=0, start=2, token_ids=(1, 2, 3), block_table=(5, 6), is_prefill=True, sample=True),
        Piece(seq_id=1, start=6, token_ids=(4,), block_table=(3, 1), is_prefill=False, sample=True),
        Piece(seq_id=2, start=0, token_ids=(7,), block_table=(2,), is_prefill=True, sample=True),
    ))
    ctx = _context(mb, cache)
    state = ctx.state
    # Positions 2, 3 in block 5 (slots 22, 23) and 4 in block 6 (slot 24); position 6 in block 1 (slot 6);
    # position 0 in block 2 (slot 8).
    assert ctx.inputs.slot_mapping.tolist() == [22, 23, 24, 6, 8]
    assert state.chunks == [(0, 3, 5, 0)]  # (first row, q_len, context, piece)
    assert state.decode_rows.tolist() == [3, 4]
    assert state.decode_ctx.tolist() == [7, 1]
    chunk_blocks, decode_tables = sdpa._tables(state, ctx.inputs.block_tables, 4)
    assert [b.tolist() for b in chunk_blocks] == [[5, 6]]
    assert decode_tables.view(2, -1).tolist() == [[3, 1], [2, 0]]


def test_sdpa_split_without_decodes():
    cache = KVCache([0], num_blocks=4, block_size=4, hf_config=_hf_config(), dtype=torch.float32, device=CPU)
    mb = MicroBatch(0, (Piece(seq_id=0, start=0, token_ids=(1, 2), block_table=(3,), is_prefill=True, sample=True),))
    ctx = _context(mb, cache)
    state = ctx.state
    assert state.decode_rows.numel() == 0
    assert sdpa._tables(state, ctx.inputs.block_tables, 4)[1].numel() == 0
    assert len(state.chunks) == 1
