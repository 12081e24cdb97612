"""The planner's bookkeeping for one request: tokens so far, KV blocks held, status and timings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pp_runtime.request import Request


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    output_token_ids: list[int] = field(default_factory=list)
    # Tokens whose keys and values are in the KV cache (every stage's): the pieces that came back.
    num_computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    # Pieces of this request in micro-batches that have not come back yet (reserved in the build under way
    # included), and their tokens. Several prefill chunks of one prompt may be in flight at once (chunk
    # pipelining): stages serve micro-batches in order, so each chunk finds its prefix's KV on every stage.
    num_in_flight: int = 0
    tokens_in_flight: int = 0
    # Tokens the planner had put into micro-batches when this request arrived: the fair prefill order's clock.
    arrival_work: int = 0
    # In-flight slot the request is pinned to (balances decodes across micro-batches); -1: none.
    slot: int = -1
    finish_reason: str | None = None
    error: str | None = None
    num_preemptions: int = 0
    # Wall-clock seconds since job start.
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    finish_s: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def in_flight(self) -> bool:
        """Part of a micro-batch that has not come back yet (or of the one being built)."""
        return self.num_in_flight > 0

    @property
    def num_scheduled(self) -> int:
        """Tokens handed to micro-batches: computed, or in flight. The next piece starts here."""
        return self.num_computed + self.tokens_in_flight

    @property
    def num_unscheduled(self) -> int:
        """Tokens of prompt + outputs no micro-batch holds yet."""
        return self.num_tokens - self.num_scheduled

    @property
    def in_prefill(self) -> bool:
        """More than the last token is missing from the cache: a prompt (or a recompute) is being processed."""
        return self.num_uncomputed > 1 or not self.output_token_ids

    def token_ids(self, start: int, n: int) -> tuple[int, ...]:
        """Tokens at positions ``start .. start + n - 1`` of prompt + outputs, without copying either whole."""
        prompt = self.request.prompt_token_ids
        p = len(prompt)
        if start + n <= p:
            return tuple(prompt[start:start + n])
        out = self.output_token_ids
        if start >= p:
            return tuple(out[start - p:start - p + n])
        return tuple(prompt[start:]) + tuple(out[:start + n - p])

    def __repr__(self) -> str:
        return (f"Seq({self.seq_id}, {self.request.id!r}, {self.status.value}, computed={self.num_computed}/"
                f"{self.num_tokens}, in_flight={self.tokens_in_flight}, out={len(self.output_token_ids)})")
