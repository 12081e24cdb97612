"""ORCA (Yu et al. 2022): iteration-level batching with whole prompts.

Each micro-batch carries a decode token for every running request not in flight, then whole prompts of new
requests in arrival order while they fit the token budget. Prompts are never chunked: one longer than the
budget runs alone in a micro-batch that is otherwise empty, so it still runs.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.sequence import Sequence


class OrcaPlanner(Planner):
    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        work: list[tuple[Sequence, int]] = []
        room = self.cfg.token_budget - self._take_decodes(self._ready(), self.cfg.token_budget, work)
        self._admit_whole_prompts(room, work)
        return work
