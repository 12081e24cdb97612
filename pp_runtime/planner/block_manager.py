"""Paged KV-cache bookkeeping: which blocks each sequence holds. Pure Python; the tensors live on the stages.

Rank 0 owns the only block manager. Every stage's cache has the same number of blocks, so the block tables
the planner puts into a micro-batch are valid on every stage.
"""

from __future__ import annotations

from pp_runtime.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Pop from the end: low block ids are handed out first, which keeps plans readable.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks ``seq`` must gain to hold ``num_new_tokens`` more tokens after those already scheduled."""
        return max(0, blocks_for(seq.num_scheduled + num_new_tokens, self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        need = self.blocks_needed(seq, num_new_tokens)
        if need > len(self._free):
            raise RuntimeError(f"out of KV blocks: {seq!r} needs {need}, {len(self._free)} free")
        for _ in range(need):
            seq.block_table.append(self._free.pop())

    def free(self, seq: Sequence) -> None:
        self._free.extend(reversed(seq.block_table))
        seq.block_table.clear()

    def fits_alone(self, num_tokens: int) -> bool:
        """Whether a sequence of ``num_tokens`` tokens fits the whole cache (else it can never run)."""
        return blocks_for(num_tokens, self.block_size) <= self.num_blocks
