"""Sampler: greedy is argmax; per-(seed, step) determinism; the temperature / top-k / top-p filters.

Statistical checks use a fixed set of seeds, so they are deterministic: each can only fail if the sampler changes.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.plan import Piece
from pp_runtime.request import SamplingParams
from pp_runtime.sampler import sample


def _piece(*, seq_id: int = 0, step: int = 0, **params) -> Piece:
    return Piece(seq_id=seq_id, start=0, token_ids=(1,), block_table=(0,), is_prefill=False, sample=True,
                 params=SamplingParams(**params), step=step)


def _draw(logits_row: torch.Tensor, **kwargs) -> int:
    return sample(logits_row[None], [_piece(**kwargs)])[0]


def _logits_for(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()


def test_greedy_is_argmax_per_row():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=gen)
    pieces = [_piece(seq_id=i) for i in range(6)]
    assert sample(logits, pieces) == [int(logits[i].argmax()) for i in range(6)]


def test_greedy_rows_unaffected_by_sampled_rows_in_the_same_batch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=gen)
    out = sample(logits, [_piece(), _piece(temperature=1.0, seed=5), _piece()])
    assert out[0] == int(logits[0].argmax())
    assert out[2] == int(logits[2].argmax())


def test_same_seed_and_step_give_the_same_token_however_batched():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 64, generator=gen)
    row = logits[2]
    for seed in range(20):
        for step in (0, 3, 17):
            alone = _draw(row, temperature=1.3, seed=seed, step=step)
            assert alone == _draw(row, temperature=1.3, seed=seed, step=step)
            # Same row at another batch position, next to other sampled rows, from another sequence id.
            batch = [_piece(temperature=1.0, seed=99), _piece(temperature=2.0, seed=7, step=1),
                     _piece(seq_id=123, temperature=1.3, seed=seed, step=step), _piece()]
            assert sample(torch.stack([logits[0], logits[1], row, logits[3]]), batch)[2] == alone


def test_different_steps_draw_fresh_tokens():
    uniform = torch.zeros(50)
    tokens = [_draw(uniform, temperature=1.0, seed=11, step=step) for step in range(200)]
    # 200 uniform draws over 50 ids hit about 49 distinct ids; a generator that ignored the step would hit 1.
    assert len(set(tokens)) >= 35


def test_different_seeds_draw_fresh_tokens():
    uniform = torch.zeros(50)
    tokens = [_draw(uniform, temperature=1.0, seed=seed, step=4) for seed in range(200)]
    assert len(set(tokens)) >= 35


def test_frequencies_follow_the_softmax():
    probs = [0.5, 0.25, 0.15, 0.1]
    counts = Counter(_draw(_logits_for(probs), temperature=1.0, seed=seed) for seed in range(2000))
    for token, p in enumerate(probs):
        # Standard error is about 0.011 here; 0.04 is well over three of them.
        assert counts[token] / 2000 == pytest.approx(p, abs=0.04)


def test_temperature_sharpens_and_flattens():
    logits = _logits_for([0.4, 0.3, 0.2, 0.1])
    cold = Counter(_draw(logits, temperature=0.05, seed=s) for s in range(300))
    assert cold[0] >= 295  # p0/p1 = (4/3)^20 ~ 315
    hot = Counter(_draw(logits, temperature=50.0, seed=s) for s in range(2000))
    assert all(hot[t] / 2000 == pytest.approx(0.25, abs=0.04) for t in range(4))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), step=st.integers(0, 10_000), temperature=st.floats(1e-4, 1e4),
       data=st.integers(0, 2**31))
def test_top_k_one_is_greedy_for_any_temperature(seed, step, temperature, data):
    logits = torch.randn(100, generator=torch.Generator().manual_seed(data)) * 5
    assert _draw(logits, temperature=temperature, top_k=1, seed=seed, step=step) == int(logits.argmax())


def test_tiny_top_p_keeps_only_the_top_token():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(3))
    top = int(logits.argmax())
    assert {_draw(logits, temperature=1.0, top_p=1e-6, seed=s) for s in range(300)} == {top}


@pytest.mark.parametrize("top_p, support", [(0.45, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, support):
    # Sorted probabilities 0.5, 0.3, 0.15, 0.05 (shuffled ids to check the mapping back from sorted order).
    ids = [2, 0, 3, 1]
    probs = [0.0] * 4
    for rank, p in zip(ids, [0.5, 0.3, 0.15, 0.05]):
        probs[rank] = p
    seen = {_draw(_logits_for(probs), temperature=1.0, top_p=top_p, seed=s) for s in range(1500)}
    assert seen == {ids[r] for r in support}


def test_top_k_restricts_support_to_the_k_best():
    logits = torch.randn(30, generator=torch.Generator().manual_seed(4))
    best5 = set(torch.topk(logits, 5).indices.tolist())
    seen = {_draw(logits, temperature=2.0, top_k=5, seed=s) for s in range(800)}
    assert seen == best5


def test_top_k_at_least_vocab_is_no_filter():
    uniform = torch.zeros(8)
    assert {_draw(uniform, temperature=1.0, top_k=8, seed=s) for s in range(300)} == set(range(8))
    assert {_draw(uniform, temperature=1.0, top_k=50, seed=s) for s in range(300)} == set(range(8))


def test_top_k_and_top_p_combine():
    # top_k=3 keeps 0.4, 0.3, 0.2 (renormalised to 4/9, 3/9, 2/9); top_p=0.6 then keeps the first two.
    logits = _logits_for([0.4, 0.3, 0.2, 0.1])
    assert {_draw(logits, temperature=1.0, top_k=3, top_p=0.6, seed=s) for s in range(1000)} == {0, 1}


def test_seed_none_falls_back_to_seq_id():
    logits = torch.zeros(1000)
    by_seq = [_draw(logits, temperature=1.0, seq_id=7, step=s) for s in range(40)]
    by_seed = [_draw(logits, temperature=1.0, seq_id=99, seed=7, step=s) for s in range(40)]
    other_seq = [_draw(logits, temperature=1.0, seq_id=8, step=s) for s in range(40)]
    assert by_seq == by_seed
    assert by_seq != other_seq


def test_tiny_positive_temperature_does_not_crash():
    logits = torch.tensor([30.0, -2.0, 1.0, 0.5])  # 30 / 1e-38 overflows float32
    assert _draw(logits, temperature=1e-38, seed=0) == 0
