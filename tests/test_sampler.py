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
from stages.sampler import SamplingTensors, mix64, mix64_tensor, sample, sample_tensors


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
    # Below float32's range the temperature would round to 0 (then 0 / 0 is NaN): it is clamped above 0.
    tiny = SamplingTensors.build([_piece(temperature=1e-300)], logits.device)
    assert tiny.drawn.temperature.item() > 0
    assert all(_draw(logits, temperature=1e-300, top_p=0.5, seed=s) == 0 for s in range(20))


def test_top_k_beyond_int64_is_no_filter():
    uniform = torch.zeros(8)
    assert {_draw(uniform, temperature=1.0, top_k=10**30, seed=s) for s in range(300)} == set(range(8))


def test_tensor_hash_equals_the_integer_reference():
    # Bit patterns with the sign bit set too: torch's >> is arithmetic, the hash needs a logical shift.
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-2**63, 2**63 - 1, (2000,), dtype=torch.int64, generator=gen)
    x = torch.cat([x, torch.tensor([0, 1, -1, -2**63, 2**63 - 1])])
    got = [v & (2**64 - 1) for v in mix64_tensor(x).tolist()]
    assert got == [mix64(v) for v in x.tolist()]


def _chi_square(counts: Counter, probs: list[float], n: int) -> float:
    return sum((counts[t] - n * p) ** 2 / (n * p) for t, p in enumerate(probs) if p > 0)


# Chi-square critical values at p = 0.001 for 7 and 2 degrees of freedom.
_CHI2_7, _CHI2_2 = 24.32, 13.82


def test_distribution_matches_the_softmax_chi_square():
    probs = [0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02]
    n = 4000
    counts = Counter(_draw(_logits_for(probs), temperature=1.0, seed=seed, step=seed % 7) for seed in range(n))
    assert set(counts) <= set(range(8))
    assert _chi_square(counts, probs, n) < _CHI2_7


def test_filtered_distribution_is_the_renormalised_kept_set_chi_square():
    # top_k=4 keeps 0.3 0.2 0.15 0.12 (sum 0.77); top_p=0.7 then keeps the first three of those
    # (renormalised 0.39, 0.26, 0.19, 0.16: 0.65 < 0.7 comes before the third, 0.84 before the fourth).
    probs = [0.12, 0.3, 0.02, 0.2, 0.07, 0.15, 0.1, 0.04]
    n = 3000
    counts = Counter(_draw(_logits_for(probs), temperature=1.0, top_k=4, top_p=0.7, seed=seed) for seed in range(n))
    assert set(counts) == {1, 3, 5}
    kept = [p if t in (1, 3, 5) else 0.0 for t, p in enumerate(probs)]
    total = sum(kept)
    assert _chi_square(counts, [p / total for p in kept], n) < _CHI2_2


def test_a_no_op_filter_draws_the_same_token_as_no_filter():
    # The sorted path takes each token's noise by its id, so keeping every token changes nothing.
    logits = torch.randn(300, generator=torch.Generator().manual_seed(6))
    for seed in range(60):
        plain = _draw(logits, temperature=0.8, seed=seed, step=2)
        assert _draw(logits, temperature=0.8, top_k=300, seed=seed, step=2) == plain
        assert _draw(logits, temperature=0.8, top_k=1000, top_p=1.0, seed=seed, step=2) == plain


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_each_row_depends_only_on_its_logits_and_seed_step(data):
    # A batch mixing greedy rows and rows with different temperatures, top-k and top-p, in any order: every row
    # gets the token it gets alone.
    n = data.draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    logits = torch.randn(n, 40, generator=gen) * 3
    pieces = [_piece(seq_id=data.draw(st.integers(0, 50)), step=data.draw(st.integers(0, 99)),
                     temperature=data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
                     top_k=data.draw(st.sampled_from([0, 1, 5, 40, 100])),
                     top_p=data.draw(st.sampled_from([1.0, 0.9, 0.3])),
                     seed=data.draw(st.one_of(st.none(), st.integers(-2**70, 2**70))))
              for _ in range(n)]
    alone = [sample(logits[i:i + 1], [pieces[i]])[0] for i in range(n)]
    perm = data.draw(st.permutations(range(n)))
    together = sample(logits[list(perm)], [pieces[i] for i in perm])
    assert together == [alone[i] for i in perm]


def test_sample_tensors_returns_int64_on_the_logits_device_and_keeps_greedy_rows():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(7))
    pieces = [_piece(), _piece(temperature=1.0, seed=1), _piece(), _piece(temperature=0.7, top_k=3, seed=2),
              _piece()]
    st_ = SamplingTensors.build(pieces, logits.device)
    assert not st_.all_greedy and st_.drawn.index.tolist() == [1] and st_.filtered.index.tolist() == [3]
    out = sample_tensors(logits, st_)
    assert out.dtype == torch.int64 and out.shape == (5,) and out.device == logits.device
    argmax = logits.argmax(-1)
    assert out[[0, 2, 4]].tolist() == argmax[[0, 2, 4]].tolist()
    assert out[3].item() in set(torch.topk(logits[3], 3).indices.tolist())
    assert SamplingTensors.build([_piece(), _piece()], logits.device).all_greedy


def test_batches_larger_than_a_row_block_draw_each_row_as_alone():
    # 150 drawn rows span three vectorised blocks; rows with and without filters mix in every block.
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(150, 50, generator=gen) * 2
    pieces = [_piece(seq_id=i, step=i % 7, temperature=0.5 + (i % 4) * 0.5, top_k=(0, 3, 20)[i % 3],
                     top_p=(1.0, 0.8)[i % 2], seed=None if i % 5 else i * 11) for i in range(150)]
    together = sample(logits, pieces)
    assert together == [sample(logits[i:i + 1], [pieces[i]])[0] for i in range(150)]
    assert len(set(together)) > 10


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_sorting_only_the_candidates_draws_what_the_full_sort_draws(data):
    from stages.sampler import _draw_filtered

    n = data.draw(st.integers(1, 5))
    vocab = data.draw(st.integers(2, 600))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    logits = torch.randn(n, vocab, generator=gen) * data.draw(st.sampled_from([0.1, 1.0, 3.0]))
    if data.draw(st.booleans()):  # many ties, also at the k-th largest and at the nucleus's edge
        logits = logits.round()
    temperature = torch.tensor([data.draw(st.sampled_from([0.3, 1.0, 2.0])) for _ in range(n)])
    top_k = torch.tensor([data.draw(st.sampled_from([0, 1, 3, 50, vocab, vocab + 5])) for _ in range(n)])
    top_p = torch.tensor([data.draw(st.sampled_from([1.0, 0.995, 0.9, 0.5, 0.05])) for _ in range(n)])
    # Each row drawn 64 times (other keys): a kept token left out of the candidates would win some of the draws.
    reps = 64
    logits, temperature, top_k, top_p = (x.repeat_interleave(reps, dim=0) for x in (logits, temperature, top_k, top_p))
    keys = torch.randint(-2**63, 2**63 - 1, (n * reps,), generator=gen, dtype=torch.int64)
    full = _draw_filtered(logits, temperature, keys, top_k, top_p)
    assert _draw_filtered(logits, temperature, keys, top_k, top_p, candidates=True).tolist() == full.tolist()
