"""BlockManager: block counts, allocation and reuse, running out, and a random allocate/free property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.planner.block_manager import BlockManager, blocks_for
from pp_runtime.request import Request
from pp_runtime.sequence import Sequence


def _seq(seq_id: int = 0, prompt_len: int = 4) -> Sequence:
    return Sequence(seq_id, Request(f"r{seq_id}", tuple(range(2, 2 + prompt_len))))


def _advance(bm: BlockManager, seq: Sequence, n: int) -> None:
    """What the planner does: make room for ``n`` more tokens, then count them as computed."""
    bm.allocate(seq, n)
    seq.num_computed += n


@pytest.mark.parametrize("tokens, block_size, blocks", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (16, 16, 1),
                                                         (17, 16, 2), (7, 1, 7)])
def test_blocks_for_rounds_up(tokens, block_size, blocks):
    assert blocks_for(tokens, block_size) == blocks


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (4, 0), (-1, 4)])
def test_rejects_empty_cache(num_blocks, block_size):
    with pytest.raises(ValueError, match="num_blocks >= 1 and block_size >= 1"):
        BlockManager(num_blocks, block_size)


def test_blocks_needed_counts_only_new_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = _seq()
    assert bm.blocks_needed(seq, 0) == 0
    assert bm.blocks_needed(seq, 1) == 1
    assert bm.blocks_needed(seq, 4) == 1
    assert bm.blocks_needed(seq, 5) == 2
    _advance(bm, seq, 3)  # 3 tokens in one block: one free slot left in it
    assert bm.blocks_needed(seq, 1) == 0
    assert bm.blocks_needed(seq, 2) == 1
    assert bm.blocks_needed(seq, 9) == 2  # 12 tokens -> 3 blocks, 1 held


def test_allocate_hands_out_low_ids_first_and_exactly_what_is_needed():
    bm = BlockManager(num_blocks=6, block_size=4)
    a, b = _seq(0), _seq(1)
    _advance(bm, a, 5)
    _advance(bm, b, 4)
    assert a.block_table == [0, 1]
    assert b.block_table == [2]
    assert bm.num_free == 3
    _advance(bm, a, 3)  # 8 tokens still fit a's two blocks
    assert a.block_table == [0, 1]
    _advance(bm, a, 1)
    assert a.block_table == [0, 1, 3]
    assert bm.num_free == 2


def test_free_returns_blocks_and_they_are_reused():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = _seq(0), _seq(1)
    _advance(bm, a, 4)
    _advance(bm, b, 2)
    held_by_a = list(a.block_table)
    bm.free(a)
    assert a.block_table == []
    assert bm.num_free == 3
    c = _seq(2)
    _advance(bm, c, 4)
    # c gets a's old blocks back (in the same order), not the never-used block 3.
    assert c.block_table == held_by_a
    assert set(c.block_table).isdisjoint(b.block_table)
    bm.free(a)  # freeing an empty table changes nothing
    assert bm.num_free == 1


def test_out_of_blocks_raises_and_leaves_state_unchanged():
    bm = BlockManager(num_blocks=3, block_size=4)
    a, b = _seq(0), _seq(1)
    _advance(bm, a, 8)
    assert bm.can_allocate(b, 4)
    assert not bm.can_allocate(b, 5)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(b, 5)
    assert b.block_table == []
    assert bm.num_free == 1
    bm.allocate(b, 4)
    assert b.block_table == [2]
    assert bm.num_free == 0
    assert bm.can_allocate(b, 0)  # nothing new needed even with no free block


def test_fits_alone():
    bm = BlockManager(num_blocks=3, block_size=4)
    assert bm.fits_alone(1)
    assert bm.fits_alone(12)
    assert not bm.fits_alone(13)
    # Independent of what is allocated now: it is about the whole cache.
    _advance(bm, _seq(), 12)
    assert bm.fits_alone(12)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 4), st.integers(0, 9)),
        st.tuples(st.just("free"), st.integers(0, 4), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(1, 12), block_size=st.integers(1, 5), ops=_ops)
def test_random_allocate_free_never_double_books(num_blocks, block_size, ops):
    bm = BlockManager(num_blocks, block_size)
    seqs = [_seq(i) for i in range(5)]
    for op, who, n in ops:
        seq = seqs[who]
        if op == "free":
            bm.free(seq)
            seq.num_computed = 0
        elif bm.can_allocate(seq, n):
            _advance(bm, seq, n)
        else:
            before = (list(seq.block_table), bm.num_free)
            with pytest.raises(RuntimeError):
                bm.allocate(seq, n)
            assert (list(seq.block_table), bm.num_free) == before
        held = [b for s in seqs for b in s.block_table]
        assert len(held) == len(set(held)), "a block is held twice"
        assert all(0 <= b < num_blocks for b in held)
        assert len(held) + bm.num_free == num_blocks
        # Free blocks are exactly those nobody holds.
        assert set(bm._free) == set(range(num_blocks)) - set(held)
        for s in seqs:
            assert len(s.block_table) == -(-s.num_computed // block_size)
