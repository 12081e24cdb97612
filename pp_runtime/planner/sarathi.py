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

Fair sharing (``scheduler.prefill_order=fair``, the default): prefill chunks go first to the request with the
least prefill left, so short prompts that arrive behind a long one get into the next micro-batches instead of
waiting for all of it; with aging, so that a long prompt's TTFT stays near its own alone: once the pipeline has
served others ``AGING`` times a request's tokens since it arrived (in tokens; its own do not count), every further
token served to another request delays it past (1 + ``AGING``) times its time alone. It is then *aged*: it goes
before every request that is not, aged ones by deadline (the work clock at its arrival plus (1 + ``AGING``) times
its tokens, earliest first). Decodes are never held back (stall-free), so the requests that overtook a long
prompt keep shortening each of its chunks by their decode tokens until it is done. Under a stream of short
prompts a long prompt's TTFT is at most about (1 + load x (1 + ``AGING``)) times its TTFT alone (load: work
arriving per work served), since only work arriving before its deadline goes first. Admission follows the same
order over the first ``FAIR_WINDOW`` requests of the waiting queue (which compete with the running prefills by
the same key).

``prefill_order=deadline``: fair, and while a prompt is aged the decodes of requests younger than it go after its
prefill chunks, in the room they leave within the balancing target: the short requests that overtook it pay once
in TBT instead of in its TTFT (on issue 17's mix, one 4000-token prompt behind 16 short ones, simulated: its TTFT
1.22x its own alone on 2 stages instead of 1.28x; the short requests' largest gap between tokens 64 ms instead
of 20). With ``scheduler.tbt_slo_ms`` set no decode waits. Under overload many prompts are aged at once and the
held decodes cost throughput (4-8% on real traces in pp-sim, ``scripts/bench_long_prompt.py orders``), which is
why it is not the default. ``prefill_order=fcfs`` serves prefills, and admits requests, in arrival order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from pp_runtime.plan import MicroBatch
from pp_runtime.planner.base import Planner, arrival_order
from pp_runtime.planner.fill import Fill, Limits
from pp_runtime.planner.slots import SlotTable
from pp_runtime.sequence import SeqStatus, Sequence

# A request is aged once the pipeline served others this many times its tokens since it arrived: the TTFT
# slowdown fair order aims to keep every request within (issue 17's target for a long prompt among short ones).
AGING = 0.25
FAIR_WINDOW = 64  # waiting requests the fair order looks at per micro-batch (bounds the planner's work)


class SarathiPlanner(Planner):
    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.limits = Limits.build(token_budget=cfg.token_budget, chunk_size=cfg.chunk_size, tile=cfg.tile,
                                   model=self.cost_model, time_balanced=cfg.time_balanced,
                                   tbt_slo_ms=cfg.tbt_slo_ms)
        self.slots = SlotTable(self.num_slots)
        limit = cfg.max_chunks_in_flight
        self.max_chunks_in_flight = self.num_slots if limit is None else min(limit, self.num_slots)
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
            ready = self._ready_prefills()
            # Deadline order only: the decodes of requests younger than an aged prompt go after its chunks.
            late = self._late_prefill(ready)
            keep = None if late is None else (lambda seq: not self._younger(seq, late))
            if self._add_decodes(slot, fill, work, keep=keep):
                self._limit_prefills(fill)
                self._add_prefills(slot, fill, work, ready)
                if late is not None:  # they take the room the chunks leave, within the balancing target
                    self._add_decodes(slot, fill, work, keep=lambda seq: self._younger(seq, late),
                                      balanced=fill.has_prefill)
            if work:
                self._cursor = (slot + 1) % self.num_slots
                self._built_slot = slot
                return work
        return []

    def _limit_prefills(self, fill: Fill) -> None:
        """Between a micro-batch's decodes and its prefill chunks: a policy's hook to narrow ``fill.limits`` for
        the prefills (``throttle``); SARATHI fills the budget."""

    def _add_decodes(self, slot: int, fill: Fill, work: list[tuple[Sequence, int]], *,
                     keep: Callable[[Sequence], bool] | None = None, balanced: bool = False) -> bool:
        """Add a decode token for each ready request of ``slot`` (those ``keep`` accepts); False if the budget or
        SLO cut them short (then no prefill may take the room a decode was denied)."""
        members = self.slots.members[slot]
        served = []
        for seq in list(members):
            if seq.in_flight or seq.status is not SeqStatus.RUNNING or seq.in_prefill or (keep and not keep(seq)):
                continue
            context_len = seq.num_tokens
            if not fill.can_decode(context_len, balanced=balanced):
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

    def _ready_prefills(self) -> list[Sequence]:
        """Running requests with prefill left that may have one more chunk in flight, in admission order."""
        ready = []
        for seq in list(self._prefilling):
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted earlier in this build
            if not seq.in_prefill:
                self._prefilling.pop(seq, None)
            elif seq.num_in_flight < self.max_chunks_in_flight and (
                    seq.num_unscheduled > 1 or (seq.num_unscheduled == 1 and not seq.output_token_ids)):
                # A recompute's last token waits for the chunks in flight: it goes as a decode (priced as one).
                ready.append(seq)
        return ready

    def _late_prefill(self, ready: list[Sequence]) -> Sequence | None:
        """The aged prompt served first (the earliest deadline, see the module doc): requests that came after it
        have their decodes go after the prefill chunks (``prefill_order=deadline`` only); None under the other
        orders, with a TBT SLO (decodes keep its promise), or when no prompt is aged."""
        if self.cfg.prefill_order != "deadline" or self.cfg.tbt_slo_ms is not None:
            return None
        candidates = [*ready, *itertools.islice(self.waiting, FAIR_WINDOW)]
        late = [seq for seq in candidates if self._aged(seq)]
        return min(late, key=self._fair_key) if late else None

    @staticmethod
    def _younger(seq: Sequence, than: Sequence) -> bool:
        return arrival_order(seq) > arrival_order(than)

    def _add_prefills(self, slot: int, fill: Fill, work: list[tuple[Sequence, int]], ready: list[Sequence]) -> None:
        if self.cfg.prefill_order == "fcfs":
            for seq in ready:
                if seq.status is SeqStatus.RUNNING and not self._add_chunk(seq, fill, work):
                    return
            while self.waiting and self._add_chunk(self.waiting[0], fill, work, admit_to=slot):
                pass
            return
        # Fair: merge the running prefills and the front of the waiting queue, both by _fair_key. One that gets no
        # blocks is passed over (an older request may still preempt a younger one for its blocks).
        ready.sort(key=self._fair_key)
        window = sorted(itertools.islice(self.waiting, FAIR_WINDOW), key=self._fair_key)
        i = j = 0
        admitting = True
        while True:
            head = window[j] if admitting and j < len(window) else None
            if i < len(ready) and (head is None or self._fair_key(ready[i]) <= self._fair_key(head)):
                seq, admit_to = ready[i], None
                i += 1
                if seq.status is not SeqStatus.RUNNING:
                    continue  # preempted earlier in this build
            elif head is not None:
                seq, admit_to = head, slot
                j += 1
            else:
                return
            before = len(work)
            if not self._add_chunk(seq, fill, work, admit_to=admit_to):
                if len(work) > before or fill.tokens >= fill.limits.token_budget:
                    return  # a chunk cut short, or the micro-batch is full
                if admit_to is not None:
                    admitting = False  # short of blocks or seats: nobody overtakes it into the cache in this build

    def _aged(self, seq: Sequence) -> bool:
        """Whether the pipeline has served others ``AGING`` times ``seq``'s tokens since it arrived (its own tokens
        do not count: waiting is what ages a request). From then on every token served to another request delays
        it past (1 + ``AGING``) times its time alone."""
        return self.work_scheduled - seq.arrival_work - seq.num_scheduled >= AGING * seq.num_tokens

    def _fair_key(self, seq: Sequence) -> tuple[int, float, int]:
        """Sort key, first served first: aged requests by deadline (the work clock at which a request served
        alone from its arrival would have had (1 + ``AGING``) times its own tokens), then the others by prefill
        tokens left."""
        if self._aged(seq):
            return 0, seq.arrival_work + (1 + AGING) * seq.num_tokens, seq.seq_id
        return 1, seq.num_unscheduled, seq.seq_id

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
