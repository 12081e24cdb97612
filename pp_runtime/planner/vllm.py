"""vLLM's original scheduler: prefill first, prefill and decode never mixed.

While requests wait and fit the KV cache, a micro-batch holds whole prompts only (in arrival order, up to the
token budget; one longer than the budget runs alone). Otherwise it holds decode tokens only.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.sequence import Sequence


class VllmPlanner(Planner):
    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        work: list[tuple[Sequence, int]] = []
        self._admit_whole_prompts(self.cfg.token_budget, work)
        if not work:
            self._take_decodes(self._ready(), self.cfg.token_budget, work)
        return work
