"""gLLM's token throttling (Guo et al. 2025), as a policy to compare with SARATHI: prefill tokens per micro-batch
follow the pending prefill work and the KV cache's free room; decode tokens are spread evenly over the
micro-batches in flight.

Everything else is SARATHI's (``sarathi.py``): the slots, which already spread decodes evenly (a request is pinned
to one in-flight slot and slots are kept balanced), the time-balanced chunks, chunk pipelining and the prefill
order. What changes is the prefill budget of each micro-batch, after its decodes:

    prefill = clamp(pending prefill tokens / num_slots, MIN_PREFILL, token_budget - decodes) x min(1, free / KV_FREE)

where ``free`` is the share of KV blocks free: the pending prompts are spread over one pipeline round of
micro-batches rather than packed into the first ones, and prefill slows down as the cache fills (gLLM's two
throttles), so decodes keep their room and preemption is rarer. At least one prefill token goes into a
micro-batch that would otherwise be empty, so progress never stops.
"""

from __future__ import annotations

from dataclasses import replace

from pp_runtime.planner.fill import Fill
from pp_runtime.planner.sarathi import SarathiPlanner

MIN_PREFILL = 16  # tokens: below this a micro-batch's fixed cost dominates
KV_FREE = 0.25  # prefill runs at full rate while at least this share of the KV blocks is free


class ThrottlePlanner(SarathiPlanner):
    def _limit_prefills(self, fill: Fill) -> None:
        fill.limits = replace(self.limits, token_budget=fill.tokens + self.prefill_budget(fill.tokens))

    def prefill_budget(self, decodes: int) -> int:
        """Prefill tokens for a micro-batch that already holds ``decodes`` decode tokens."""
        pending = sum(s.num_unscheduled for s in self._prefilling) + sum(s.num_uncomputed for s in self.waiting)
        room = self.cfg.token_budget - decodes
        if pending == 0 or room <= 0:
            return 0
        share = min(max(-(-pending // self.num_slots), MIN_PREFILL), room)
        free = self.blocks.num_free / self.blocks.num_blocks
        return max(int(share * min(1.0, free / KV_FREE)), 1 if decodes == 0 else 0)
