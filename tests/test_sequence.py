"""Sequence bookkeeping: token slices across the prompt/output boundary, prefill state."""

from hypothesis import given
from hypothesis import strategies as st

from pp_runtime.request import Request
from pp_runtime.sequence import Sequence


@given(prompt=st.lists(st.integers(0, 99), min_size=1, max_size=12), out=st.lists(st.integers(0, 99), max_size=12),
       data=st.data())
def test_token_ids_slice_prompt_then_outputs(prompt, out, data):
    seq = Sequence(0, Request("r", tuple(prompt)))
    seq.output_token_ids = list(out)
    full = prompt + out
    start = data.draw(st.integers(0, len(full)))
    n = data.draw(st.integers(0, len(full) - start))
    assert seq.token_ids(start, n) == tuple(full[start:start + n])


def test_in_prefill_until_only_the_last_token_is_uncomputed():
    seq = Sequence(0, Request("r", (1, 2, 3)))
    assert seq.in_prefill and seq.num_uncomputed == 3
    seq.num_computed = 3
    seq.output_token_ids.append(9)
    assert not seq.in_prefill and seq.num_uncomputed == 1
    seq.num_computed = 0  # preempted: prompt and output are recomputed as a prefill
    assert seq.in_prefill and seq.num_uncomputed == 4
