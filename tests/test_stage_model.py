"""StageModel.logits: the last stage's final norm and LM head on the sampled rows, on either of its paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.stage_model import CPU_HEAD_TRANSPOSED_ROWS, StageModel


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, CPU_HEAD_TRANSPOSED_ROWS, CPU_HEAD_TRANSPOSED_ROWS + 1, 40])
def test_logits_equal_the_head_on_the_normed_rows(rows, bias):
    """A few rows go as weight @ h.T on the CPU, more through the head module: both give the head's logits of
    the normed rows (the norm applied once), with the bias where the head has one, as [rows, vocab] float32."""
    torch.manual_seed(0)
    hidden, vocab = 24, 301
    norm = nn.LayerNorm(hidden)
    head = nn.Linear(hidden, vocab, bias=bias)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        if bias:
            head.bias.uniform_(-1, 1)
    model = StageModel(None, [], [], norm=norm, head=head)
    h = torch.randn(rows, hidden) * 3
    out = model.logits(h)
    assert out.shape == (rows, vocab) and out.dtype == torch.float32
    with torch.no_grad():
        want = head(norm(h))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_logits_of_a_bfloat16_head_come_back_as_float32():
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False).to(torch.bfloat16)
    model = StageModel(None, [], [], norm=nn.Identity(), head=head)
    h = torch.randn(2, 16, dtype=torch.bfloat16)
    out = model.logits(h)
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, head(h).float(), rtol=2e-2, atol=2e-2)
