"""The simple planner: first come, first served, one token budget per micro-batch, prefills chunked.

Running decodes go first (one token each), then the remaining prefill of running requests, then new
requests in arrival order, each chunk capped at ``scheduler.chunk_size`` and the total at
``scheduler.token_budget``.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.sequence import Sequence


class FcfsPlanner(Planner):
    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        budget = self.cfg.token_budget
        work: list[tuple[Sequence, int]] = []
        for seq in self._schedulable():
            if budget and not seq.in_prefill and seq in self.running and self._reserve(seq, 1):
                work.append((seq, 1))
                budget -= 1
        for seq in self._schedulable():
            if budget and seq.in_prefill and seq in self.running:
                n = min(seq.num_uncomputed, self.cfg.chunk_size, budget)
                if self._reserve(seq, n):
                    work.append((seq, n))
                    budget -= n
        for seq in list(self.waiting):
            if not budget:
                break
            n = min(seq.num_uncomputed, self.cfg.chunk_size, budget)
            if not self._admit(seq, n):
                break  # FCFS: nobody overtakes the head of the queue
            work.append((seq, n))
            budget -= n
        return work
