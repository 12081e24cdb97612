"""Request-level (static) batching, as before ORCA: a batch is admitted together and runs to completion.

When nothing is running, up to ``scheduler.max_num_seqs`` waiting requests are admitted at once, each with KV
blocks for its whole prompt and every output token, so the batch never needs preemption. Their whole prompts
go first (as many per micro-batch as fit the token budget; a longer one alone), then decode tokens. Requests
that arrive meanwhile wait until the whole batch has finished.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.sequence import Sequence


class StaticPlanner(Planner):
    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        if not self.running:
            self._admit_batch()
        work: list[tuple[Sequence, int]] = []
        room = self.cfg.token_budget
        ready = self._ready()
        for seq in ready:
            if seq.in_prefill:
                n = seq.num_uncomputed
                if (n > room and work) or not self._reserve(seq, n):
                    break
                work.append((seq, n))
                room -= n
        if not work:
            self._take_decodes(ready, self.cfg.token_budget, work)
        return work

    def _admit_batch(self) -> None:
        while self.waiting:
            seq = self.waiting[0]
            # KV for the prompt and every output but the last (the last sampled token's is never written).
            total = min(seq.prompt_len + seq.request.params.max_tokens, self.max_model_len) - 1
            if not self._admit(seq, total, take=False):
                return
