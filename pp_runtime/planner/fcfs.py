"""The simple planner: first come, first served, one token budget per micro-batch, prefills chunked.

Running decodes go first (one token each), then the remaining prefill of running requests, then new
requests in arrival order, each chunk capped at ``scheduler.chunk_size`` and the total at
``scheduler.token_budget``. No slots, no cost model: the baseline the other policies are measured against.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.sequence import SeqStatus, Sequence


class FcfsPlanner(Planner):
    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        work: list[tuple[Sequence, int]] = []
        ready = self._ready()
        budget = self.cfg.token_budget - self._take_decodes(ready, self.cfg.token_budget, work)
        for seq in ready:
            if budget and seq.in_prefill and seq.status is SeqStatus.RUNNING and not seq.in_flight:
                n = min(seq.num_uncomputed, self.cfg.chunk_size, budget)
                if self._reserve(seq, n):
                    work.append((seq, n))
                    budget -= n
        while budget and self.waiting:
            seq = self.waiting[0]
            n = min(seq.num_uncomputed, self.cfg.chunk_size, budget)
            if not self._admit(seq, n):
                break  # FCFS: nobody overtakes the head of the queue
            work.append((seq, n))
            budget -= n
        return work
