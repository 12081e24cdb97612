"""The vectorised stage-inputs builder equals a straightforward per-token construction, on random plans."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pp_runtime.plan import MicroBatch, Piece
from stages.inputs import build_stage_inputs

CPU = torch.device("cpu")


@st.composite
def plans(draw):
    """A micro-batch of 1-8 pieces (chunks with cached prefixes, decodes, 1-token prompts) over random,
    possibly shared and overlong block tables, plus a block size."""
    block_size = draw(st.sampled_from([1, 2, 4, 16]))
    pieces = []
    for seq_id in range(draw(st.integers(1, 8))):
        start = draw(st.integers(0, 40))
        n = draw(st.sampled_from([1, 1, 2, 3, 7, 17]))
        nblk = -(-(start + n) // block_size)
        extra = draw(st.integers(0, 2))  # a table may run past the context: those blocks must be ignored
        table = tuple(draw(st.lists(st.integers(0, 200), min_size=nblk + extra, max_size=nblk + extra)))
        tokens = tuple(draw(st.lists(st.integers(0, 50_000), min_size=n, max_size=n)))
        pieces.append(Piece(seq_id=seq_id, start=start, token_ids=tokens, block_table=table, is_prefill=n > 1,
                            sample=draw(st.booleans())))
    return MicroBatch(0, tuple(pieces)), block_size


def _reference(mb: MicroBatch, block_size: int) -> dict:
    """Per token and per piece in plain Python, the obvious way."""
    positions, slots, tokens, sample_rows, cu, ctx, tables = [], [], [], [], [0], [], []
    width = max(-(-p.context_len // block_size) for p in mb.pieces)
    for p in mb.pieces:
        for i, pos in enumerate(range(p.start, p.context_len)):
            positions.append(pos)
            slots.append(p.block_table[pos // block_size] * block_size + pos % block_size)
            tokens.append(p.token_ids[i])
        cu.append(cu[-1] + p.num_tokens)
        if p.sample:
            sample_rows.append(cu[-1] - 1)
        ctx.append(p.context_len)
        used = list(p.block_table[:-(-p.context_len // block_size)])
        tables.append(used + [0] * (width - len(used)))
    return {"positions": positions, "slot_mapping": slots, "token_ids": tokens, "sample_rows": sample_rows,
            "cu_seqlens_q": cu, "context_lens": ctx, "block_tables": tables}


@given(plans())
def test_vectorised_build_equals_per_token_reference(plan):
    mb, block_size = plan
    got = build_stage_inputs(mb, block_size=block_size, device=CPU, token_ids=True, sample_rows=True)
    want = _reference(mb, block_size)
    for name, value in want.items():
        assert getattr(got, name).tolist() == value, name
    assert got.cu_seqlens_q.dtype == got.context_lens.dtype == got.block_tables.dtype == torch.int32
    assert got.positions.dtype == got.slot_mapping.dtype == got.token_ids.dtype == torch.int64
    assert got.num_tokens == mb.num_tokens
    assert got.max_q == max(p.num_tokens for p in mb.pieces)
    assert got.max_context == max(p.context_len for p in mb.pieces)


@given(plans())
def test_sdpa_split_partitions_pieces(plan):
    from stages.attention import sdpa

    mb, block_size = plan
    inputs = build_stage_inputs(mb, block_size=block_size, device=CPU)
    got = sdpa.prepare(inputs)
    rows = [sum(p.num_tokens for p in mb.pieces[:i]) for i in range(len(mb.pieces))]
    want_chunks = [(rows[i], p.num_tokens, p.context_len, i) for i, p in enumerate(mb.pieces) if p.num_tokens > 1]
    assert got.chunks == want_chunks
    singles = [i for i, p in enumerate(mb.pieces) if p.num_tokens == 1]
    assert got.decode_pieces.tolist() == singles
    assert got.decode_rows.tolist() == [rows[i] for i in singles]
    blocks, tables = sdpa._tables(got, inputs.block_tables, block_size)
    assert [b.tolist() for b in blocks] == [list(mb.pieces[i].block_table[:-(-n // block_size)])
                                            for _, _, n, i in want_chunks]
    width = max((-(-mb.pieces[i].context_len // block_size) for i in singles), default=0)
    assert tables.numel() == len(singles) * width


def test_a_stage_gets_only_what_it_reads():
    mb = MicroBatch(0, (Piece(seq_id=0, start=0, token_ids=(5, 6), block_table=(1,), is_prefill=True,
                              sample=True),))
    middle = build_stage_inputs(mb, block_size=4, device=CPU)
    assert middle.token_ids is None and middle.sample_rows is None
    # The inputs serve every attention backend: nothing in them belongs to one (sdpa splits on its own).
    assert all("sdpa" not in f.name for f in dataclasses.fields(middle))
    assert middle.cu_seqlens_q_host.tolist() == [0, 2] and middle.context_lens_host.tolist() == [2]
    fixed = build_stage_inputs(mb, block_size=4, device=CPU, table_width=5)
    assert fixed.block_tables.tolist() == [[1, 0, 0, 0, 0]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@given(plans())
def test_cuda_build_equals_cpu_build(plan):
    mb, block_size = plan
    kwargs = dict(block_size=block_size, token_ids=True, sample_rows=True)
    cpu = build_stage_inputs(mb, device=CPU, **kwargs)
    gpu = build_stage_inputs(mb, device=torch.device("cuda"), **kwargs)  # pinned buffer, one non-blocking copy
    for name in ("positions", "slot_mapping", "cu_seqlens_q", "context_lens", "block_tables", "token_ids",
                 "sample_rows"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
