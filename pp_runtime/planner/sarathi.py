"""SARATHI (Agrawal et al. 2023): chunked prefills with piggybacked decodes, so micro-batches cost the same.

Each micro-batch serves one in-flight slot: it carries a decode token for every request pinned to that slot
(stall-free: a decode is never held back to make room for a prefill), then prefill chunks, first come first
served, until the token budget, the balancing target or the TBT SLO is reached (see ``fill.py``). Slots take
turns; a slot with nothing to run is passed over, and one with no decodes still takes prefill chunks.
Requests are pinned to the slot with the fewest requests and moved when slots drift apart (``slots.py``).

Chunk pipelining: chunk k+1 of a prompt may go into the next micro-batch while chunk k is still in flight, as
soon as stage 0 has computed chunk k (every stage serves micro-batches in launch order, so the KV of earlier
positions is in each stage's cache before a later chunk needs it). One long prompt then keeps every stage busy
instead of crossing the pipeline one chunk at a time. At most ``scheduler.max_chunks_in_flight`` chunks of one
request are in flight (default: the pipeline depth; 1 serialises them); only the last chunk samples.
"""

from __future__ import annotations

from pp_runtime.plan import MicroBatch
from pp_runtime.planner.base import Planner
from pp_runtime.planner.fill import Fill, Limits
from pp_runtime.planner.slots import SlotTable
from pp_runtime.sequence import SeqStatus, Sequence


class SarathiPlanner(Planner):
    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.limits = Limits.build(token_budget=cfg.token_budget, chunk_size=cfg.chunk_size, tile=cfg.tile,
                                   model=self.cost_model, time_balanced=cfg.time_balanced,
                                   tbt_slo_ms=cfg.tbt_slo_ms)
        self.slots = SlotTable(self.num_slots)
        limit = cfg.max_chunks_in_flight
        self.max_chunks_in_flight = self.num_slots if limit is None else min(limit, self.num_slots)
        # Running requests with prompt (or recompute) tokens left, in admission order; pruned lazily.
        self._prefilling: dict[Sequence, None] = {}
        self._cursor = 0  # the slot whose turn is next
        self._built_slot = -1
        # In-flight micro-batch id -> the slot it serves.
        self.slot_of: dict[int, int] = {}

    def schedule(self, now: float) -> MicroBatch | None:
        mb = super().schedule(now)
        if mb is not None:
            self.slot_of[mb.id] = self._built_slot
        return mb

    def postprocess(self, mb: MicroBatch, sampled: list[int], now: float) -> list[Sequence]:
        self.slot_of.pop(mb.id, None)
        return super().postprocess(mb, sampled, now)

    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        self.slots.rebalance()
        for i in range(self.num_slots):
            slot = (self._cursor + i) % self.num_slots
            fill = Fill(self.limits)
            work: list[tuple[Sequence, int]] = []
            if self._add_decodes(slot, fill, work):
                self._add_prefills(slot, fill, work)
            if work:
                self._cursor = (slot + 1) % self.num_slots
                self._built_slot = slot
                return work
        return []

    def _add_decodes(self, slot: int, fill: Fill, work: list[tuple[Sequence, int]]) -> bool:
        """Add a decode token for each ready request of ``slot``; False if the budget or SLO cut them short
        (then no prefill may take the room a decode was denied)."""
        members = self.slots.members[slot]
        served = []
        for seq in list(members):
            if seq.in_flight or seq.status is not SeqStatus.RUNNING or seq.in_prefill:
                continue
            context_len = seq.num_tokens
            if not fill.can_decode(context_len):
                # Budget or SLO full: those served now go to the back, so every decode gets its turn.
                for s in served:
                    del members[s]
                    members[s] = None
                return False
            if self._reserve(seq, 1):
                fill.add_decode(context_len)
                work.append((seq, 1))
                served.append(seq)
        return True

    def _add_prefills(self, slot: int, fill: Fill, work: list[tuple[Sequence, int]]) -> None:
        for seq in list(self._prefilling):
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted earlier in this build
            if not seq.in_prefill:
                del self._prefilling[seq]
            elif (seq.num_unscheduled and seq.num_in_flight < self.max_chunks_in_flight
                  and not self._add_chunk(seq, fill, work)):
                return
        while self.waiting and self._add_chunk(self.waiting[0], fill, work, admit_to=slot):
            pass

    def _add_chunk(self, seq: Sequence, fill: Fill, work: list[tuple[Sequence, int]], *,
                   admit_to: int | None = None) -> bool:
        """Add the next chunk of ``seq`` (admitting it first if ``admit_to`` is the slot being built).

        Returns whether the micro-batch has room for more: False once a chunk was cut short or none fit.
        """
        want = min(seq.num_unscheduled, self.cfg.chunk_size)
        n = fill.chunk(prefix=seq.num_scheduled, want=want)
        if n == 0:
            return False
        if admit_to is None:
            n = self._reserve_chunk(seq, n)
            if n == 0:
                return False
        else:
            slot = self.slots.emptiest(prefer=admit_to)
            # A slot holding a budget's worth of decodes has no room left for another request's decodes.
            if len(self.slots.members[slot]) >= self.cfg.token_budget or not self._admit(seq, n):
                return False
            self.slots.pin(seq, slot)
            self._prefilling[seq] = None
        fill.add_chunk(seq.num_scheduled, n)
        work.append((seq, n))
        return n == want

    def _reserve_chunk(self, seq: Sequence, n: int) -> int:
        """Reserve ``n`` tokens of ``seq``'s prefill (preempting younger requests if needed), or as many as
        the free blocks hold. Returns the tokens reserved, 0 if none."""
        if self._reserve(seq, n):
            return n
        bs = self.blocks.block_size
        fit = self.blocks.num_free * bs + len(seq.block_table) * bs - seq.num_scheduled
        return fit if 0 < fit < n and self._reserve(seq, fit) else 0

    def _on_release(self, seq: Sequence) -> None:
        self.slots.unpin(seq)
        self._prefilling.pop(seq, None)
