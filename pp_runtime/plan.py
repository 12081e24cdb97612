"""The plan the planner hands to the stages: token-packed micro-batches, as plain frozen data.

A micro-batch is a list of pieces; a piece is a run of consecutive tokens of one request, either a prefill
chunk or a single decode token. Activations for a micro-batch travel as ``[num_tokens, hidden]`` with the
pieces packed back to back in this order, without padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from pp_runtime.request import SamplingParams


@dataclass(frozen=True)
class Piece:
    seq_id: int
    # Position of the first token of this piece in its sequence.
    start: int
    # Tokens at positions start .. start + len - 1 (only stage 0 reads them).
    token_ids: tuple[int, ...]
    # KV-cache blocks holding positions 0 .. start + len - 1 of this sequence.
    block_table: tuple[int, ...]
    # True for a prefill chunk (or a recompute), False for a decode token.
    is_prefill: bool
    # Sample the next token from this piece's last position (the last chunk of a prefill, or a decode).
    sample: bool
    # Sampling parameters and how many tokens the sequence has generated so far (seeds per-step RNG).
    params: SamplingParams = SamplingParams()
    step: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def context_len(self) -> int:
        """Tokens this piece attends to: its cached prefix plus itself."""
        return self.start + len(self.token_ids)

    def __repr__(self) -> str:
        kind = "p" if self.is_prefill else "d"
        return f"{kind}{self.seq_id}@{self.start}+{self.num_tokens}{'*' if self.sample else ''}"


@dataclass(frozen=True)
class MicroBatch:
    id: int
    pieces: tuple[Piece, ...]

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in self.pieces)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(p.num_tokens for p in self.pieces if p.is_prefill)

    @property
    def num_decode_tokens(self) -> int:
        return sum(p.num_tokens for p in self.pieces if not p.is_prefill)

    @property
    def num_samples(self) -> int:
        return sum(1 for p in self.pieces if p.sample)

    def __repr__(self) -> str:
        return f"MB#{self.id}[{' '.join(map(repr, self.pieces))}]"
