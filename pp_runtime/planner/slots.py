"""Which in-flight slot each running request is pinned to, kept balanced as requests come and go.

With ``num_slots`` micro-batches in flight, micro-batches take turns serving the slots; a request pinned to a
slot decodes in every micro-batch that slot gets, and is back from its previous one just in time. Equal
request counts per slot mean equal decode counts per micro-batch, which is what keeps the pipeline even.
"""

from __future__ import annotations

from pp_runtime.sequence import Sequence


class SlotTable:
    def __init__(self, num_slots: int):
        # Members per slot, in the order they were pinned (dict as an ordered set: O(1) add and remove).
        self.members: list[dict[Sequence, None]] = [{} for _ in range(num_slots)]

    def counts(self) -> list[int]:
        return [len(m) for m in self.members]

    def emptiest(self, prefer: int = 0) -> int:
        """The slot with the fewest members; ties go to the first at or after ``prefer``, cyclically.

        Preferring the slot being built lets a new request's first decode follow its prefill directly.
        """
        k = len(self.members)
        return min(((prefer + i) % k for i in range(k)), key=lambda s: len(self.members[s]))

    def pin(self, seq: Sequence, slot: int) -> None:
        seq.slot = slot
        self.members[slot][seq] = None

    def unpin(self, seq: Sequence) -> None:
        if seq.slot >= 0:
            self.members[seq.slot].pop(seq, None)
        seq.slot = -1

    def rebalance(self) -> int:
        """While the fullest and emptiest slots differ by more than one, move a request that is not in flight
        (the most recently pinned) from the fullest to the emptiest. Returns the number moved."""
        moved = 0
        while True:
            counts = self.counts()
            lo = min(counts)
            donors = sorted((s for s, c in enumerate(counts) if c - lo > 1), key=lambda s: -counts[s])
            seq = next((q for s in donors for q in reversed(self.members[s]) if not q.in_flight), None)
            if seq is None:
                return moved
            self.unpin(seq)
            self.pin(seq, counts.index(lo))
            moved += 1
