"""A micro-batch's cost split into parts that any layer split can be assembled from.

Per-layer time models (the roofline, a per-layer profile) price one micro-batch as: a fixed per-stage cost, one
decoder layer, the embeddings (stage 0 only) and the final norm + LM head (last stage only). A stage that owns
``n`` layers then takes ``fixed + n * layer (+ embed) (+ head)``: the layers of a model are identical, so their
cost scales with the count. ``SplitTimeModel`` turns such a source into a time model for one layer split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PartTimes:
    """Seconds of one micro-batch per part: ``fixed`` per stage, one decoder ``layer``, ``embed``, ``head``."""

    fixed: float
    layer: float
    embed: float
    head: float

    def stage_times(self, layer_counts: Sequence[int], first_head_share: float = 0.0) -> list[float]:
        """Seconds on each stage of a split owning ``layer_counts[s]`` layers (embed first, head last; with a
        vocabulary-parallel head ``first_head_share`` of the head on stage 0 and the rest on the last stage)."""
        last = len(layer_counts) - 1
        share = first_head_share if last > 0 else 0.0
        head = [share * self.head if s == 0 else 0.0 for s in range(last + 1)]
        head[last] += (1 - share) * self.head
        return [self.fixed + n * self.layer + (self.embed if s == 0 else 0.0) + head[s]
                for s, n in enumerate(layer_counts)]

    def __add__(self, other: PartTimes) -> PartTimes:
        return PartTimes(self.fixed + other.fixed, self.layer + other.layer, self.embed + other.embed,
                         self.head + other.head)


def piece_shape(piece) -> tuple[int, int, bool, bool]:
    """``(num_tokens, context_len, is_decode, samples)`` of a ``plan.Piece`` or a ``(num_tokens, context_len)``
    tuple. As in ``cost_model.work`` a ``(1, ctx)`` tuple is a decode; a tuple always samples a token, as the
    profiler's synthetic micro-batches do."""
    if isinstance(piece, tuple):
        n, ctx = piece
        return n, ctx, n == 1, True
    return piece.num_tokens, piece.context_len, not piece.is_prefill, piece.sample


class PartSource(Protocol):
    """Anything that prices a micro-batch part by part (``RooflineParts``, ``LayerProfile``)."""

    def part_times(self, pieces: Iterable) -> PartTimes: ...


def total_parts(source: PartSource, micro_batches: Iterable[Iterable]) -> PartTimes:
    """Parts summed over a workload's micro-batches: what a split costs each stage over the whole mix."""
    total = PartTimes(0.0, 0.0, 0.0, 0.0)
    for pieces in micro_batches:
        total = total + source.part_times(pieces)
    return total


class SplitTimeModel:
    """A time model (``num_stages``, ``predict(pieces)``) for one layer split, from a per-part source."""

    def __init__(self, source: PartSource, layer_counts: Sequence[int], first_head_share: float = 0.0):
        if not layer_counts or min(layer_counts) < 1:
            raise ValueError(f"layer_counts={list(layer_counts)} needs at least one stage of at least one layer")
        self.source = source
        self.layer_counts = list(layer_counts)
        self.first_head_share = first_head_share  # a vocabulary-parallel head's share on stage 0

    @property
    def num_stages(self) -> int:
        return len(self.layer_counts)

    def __repr__(self) -> str:
        return f"SplitTimeModel({self.source!r}, layers per stage {self.layer_counts})"

    def predict(self, pieces: Iterable) -> list[float]:
        """Seconds of a micro-batch made of ``pieces`` on each stage."""
        return self.source.part_times(pieces).stage_times(self.layer_counts, self.first_head_share)
