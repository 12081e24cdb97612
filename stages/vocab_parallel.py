"""The LM head's vocabulary split between the last stage and stage 0 (a vocabulary-parallel head).

Why: the head is a ``vocab x hidden`` matmul on the sampled rows only, so it weighs almost nothing in a prefill
micro-batch (one row per finished prompt) and as much as ~10 decoder layers per decode token on SmolLM2-135M
(49152 x 384 against 1.8 M multiply-adds per token per layer). On the last stage alone it makes decode micro-batches
heavier there and prefill ones lighter, and no layer split balances both (docs/BENCHMARKS.md, issue 14). Split
over the two ends of the pipeline, as Yeung et al. split it over all stages in training ("Balancing Pipeline
Parallelism with Vocabulary Parallelism", MLSys 2025, arXiv:2411.05288), each end carries about half of it in both
phases (``pp_runtime.model.partition.head_split_point``). Rows with top-k or top-p are drawn on rank 0.

The data path of a micro-batch's ``S`` sampled rows:

1. The last stage applies the final norm (``[S, hidden]``), computes the logits of its tokens ``[v0, vocab)`` and
   reduces each row to its best candidate (``sampler.best_in_shard``: the logit on greedy rows,
   ``logit / temperature + Gumbel noise keyed by token id`` on drawn rows), then sends rank 0 one message
   (``HeadSplit.pack``): the micro-batch id, the ``S`` candidate ids and scores, the logits of the ``F`` rows with
   top-k or top-p (those need the whole row), and the normed rows.
2. Rank 0, after its own micro-batch is launched, computes the logits of ``[0, v0)`` on the same normed rows, keeps
   the better candidate per row (``sampler.merge_best``; a tie goes to the lower id) and draws the filtered rows
   from both halves joined. The tokens are those one head over the whole vocabulary samples.

The message travels over the control group (gloo) like the token ids it replaces: on CUDA it is copied to
pinned host memory first, as the token ids were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pp_runtime.plan import MicroBatch
from stages.sampler import SamplingTensors, best_in_shard, draw_filtered, is_filtered, merge_best


@dataclass(frozen=True)
class HeadSplit:
    """The split of one job: where stage 0's tokens end, and the shapes of the last stage's message."""

    vocab_start: int  # v0: the last stage's first token id
    vocab_size: int
    hidden_size: int
    dtype: torch.dtype  # the normed rows' dtype (the model's)

    @property
    def last_width(self) -> int:
        return self.vocab_size - self.vocab_start

    def counts(self, mb: MicroBatch) -> tuple[int, int]:
        """``(S, F)``: the micro-batch's sampled rows, and those with top-k or top-p."""
        pieces = [p for p in mb.pieces if p.sample]
        return len(pieces), sum(is_filtered(p.params) for p in pieces)

    def _part_bytes(self, s: int, f: int) -> tuple[int, int, int, int]:
        """Bytes of ``pack``'s four parts for ``s`` sampled rows, ``f`` of them filtered: mb id and ids, scores,
        filtered logits, normed rows."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 8 * (1 + s), 8 * s, 4 * f * self.last_width, itemsize * s * self.hidden_size

    def message_bytes(self, mb: MicroBatch) -> int:
        """Bytes of the last stage's message for ``mb`` (rank 0 posts a receive this large)."""
        return sum(self._part_bytes(*self.counts(mb)))

    def pack(self, mb_id: int, ids: torch.Tensor, scores: torch.Tensor, filtered: torch.Tensor,
             normed: torch.Tensor) -> torch.Tensor:
        """One flat uint8 tensor on the inputs' device: ``[mb id, ids [S]]`` int64, ``scores [S]`` float64,
        ``filtered [F, vocab - v0]`` float32, ``normed [S, hidden]`` (every part starts aligned to its item size)."""
        head = torch.cat([torch.tensor([mb_id], dtype=torch.int64, device=ids.device), ids])
        parts = (head, scores.to(torch.float64), filtered.to(torch.float32).contiguous(),
                 normed.to(self.dtype).contiguous())
        return torch.cat([p.reshape(-1).view(torch.uint8) for p in parts])

    def unpack(self, buf: torch.Tensor, mb: MicroBatch) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
        """``pack``'s parts from ``buf`` (uint8 ``[message_bytes(mb)]``): mb id, ids, scores, filtered, normed."""
        s, f = self.counts(mb)
        ids_bytes, score_bytes, filtered_bytes, _ = self._part_bytes(s, f)
        a = ids_bytes
        b = a + score_bytes
        c = b + filtered_bytes
        head = buf[:a].view(torch.int64)
        return (int(head[0]), head[1:], buf[a:b].view(torch.float64),
                buf[b:c].view(torch.float32).reshape(f, self.last_width),
                buf[c:].view(self.dtype).reshape(s, self.hidden_size))


def last_stage_part(model, rows: torch.Tensor, st: SamplingTensors, split: HeadSplit, mb_id: int) -> torch.Tensor:
    """The last stage's half: ``rows`` ``[S, hidden]`` (the sampled rows before the final norm) to the packed
    message (uint8, on the rows' device)."""
    normed = model.final_norm(rows)  # [S, hidden]
    logits = model.head_logits(normed)  # [S, vocab - v0]
    scores, ids = best_in_shard(logits, st, split.vocab_start)
    filtered = logits.index_select(0, st.filtered.index) if st.filtered is not None else logits[:0]
    return split.pack(mb_id, ids, scores, filtered, normed)


def first_stage_tokens(model, message: torch.Tensor, mb: MicroBatch, split: HeadSplit,
                       device: torch.device) -> torch.Tensor:
    """Rank 0's half: the last stage's ``message`` (uint8 on the host) to the token ids ``[S]`` (int64, on
    ``device``). Raises ValueError if the message is another micro-batch's."""
    mb_id, ids, scores, filtered, normed = split.unpack(message, mb)
    if mb_id != mb.id:
        raise ValueError(f"stage 0 expected the LM head rows of micro-batch {mb.id}, got those of {mb_id}")
    st = SamplingTensors.build([p for p in mb.pieces if p.sample], device)
    # A copy, also on the CPU: a view into the message may be unaligned, and BLAS then rounds another way.
    normed = normed.to(device, non_blocking=True, copy=True)
    logits = model.head_logits(normed)  # [S, v0]
    out = merge_best(best_in_shard(logits, st, 0), (scores.to(device), ids.to(device)))
    if st.filtered is not None:
        f = st.filtered
        whole = torch.cat([logits.index_select(0, f.index), filtered.to(device)], dim=1)  # [F, vocab]
        out = out.index_copy(0, f.index, draw_filtered(whole, f))
    return out
