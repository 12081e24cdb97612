"""How full the micro-batch being built is: tokens against the token budget, predicted seconds against limits.

Decode tokens are limited by the token budget and the TBT SLO only, never by the balancing target, so a
decode is never held back to make room (stall-free). Prefill chunks also stop at the balancing target: the
predicted time of a full-budget micro-batch of fresh chunks, so that every micro-batch costs the pipeline
about the same and a chunk deep into a long prompt (attention over its prefix) gets fewer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from pp_runtime.planner.cost_model import CostModel


@dataclass(frozen=True)
class Limits:
    """The per-micro-batch caps a policy fills against, fixed for the planner's lifetime."""

    token_budget: int
    # Round a chunk cut short by the caps so the micro-batch's token count is a multiple of this (0: off).
    tile: int = 0
    model: CostModel | None = None
    # Prefill chunks stop at this predicted time (balancing target, capped by the SLO); None: tokens only.
    chunk_limit_s: float | None = None
    # No micro-batch's predicted time exceeds this, except one holding a single token; None: no SLO.
    slo_s: float | None = None

    @classmethod
    def build(cls, *, token_budget: int, chunk_size: int, tile: int, model: CostModel | None,
              time_balanced: bool, tbt_slo_ms: float | None) -> Limits:
        if tbt_slo_ms is not None and model is None:
            raise ValueError(f"scheduler.tbt_slo_ms={tbt_slo_ms} needs a cost model to predict micro-batch times; "
                             f"set scheduler.cost_model_path, let the runtime profile the stages, or set "
                             f"scheduler.tbt_slo_ms=null")
        slo_s = None if tbt_slo_ms is None else tbt_slo_ms / 1e3
        target = full_budget_time(model, token_budget, chunk_size) if time_balanced and model else None
        limit = min((t for t in (target, slo_s) if t is not None), default=None)
        return cls(token_budget, tile, model, limit, slo_s)


def full_budget_time(model: CostModel, token_budget: int, chunk_size: int) -> float:
    """Predicted seconds of a micro-batch of ``token_budget`` tokens, all in fresh (prefix 0) chunks."""
    c = min(chunk_size, token_budget)
    pieces = [(c, c)] * (token_budget // c)
    if token_budget % c:
        pieces.append((token_budget % c, token_budget % c))
    return model.predict_max(pieces)


class Fill:
    """The micro-batch being built, as totals: tokens, attention work (sum of num_tokens * context_len), decode
    and prefill context tokens (``cost_model.work``'s terms)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.tokens = 0
        self.attn = 0  # prefill (token x context) pairs
        self.dec = 0  # cached tokens read by decodes
        self.pre = 0  # context tokens of the prefill chunks (the KV each reads)
        self.has_prefill = False

    def can_decode(self, context_len: int, *, balanced: bool = False) -> bool:
        """Whether a decode token attending to ``context_len`` positions fits the budget and the SLO (and, if
        ``balanced``, the balancing target, as a prefill chunk would).

        The first token of a micro-batch always fits, so progress never stops.
        """
        lim = self.limits
        if self.tokens >= lim.token_budget:
            return False
        if balanced and self.tokens and lim.chunk_limit_s is not None and not self._within(
                lim.chunk_limit_s, 1, context_len, decode=True):
            return False
        return not self.tokens or lim.slo_s is None or self._within(lim.slo_s, 1, context_len, decode=True)

    def add_decode(self, context_len: int) -> None:
        self.tokens += 1
        self.dec += context_len

    def chunk(self, *, prefix: int, want: int) -> int:
        """Tokens a prefill chunk starting at position ``prefix`` may take, out of the ``want`` it could use.

        0 when nothing fits. The first prefill of a micro-batch gets at least one token whenever the budget
        and the SLO leave room, even past the balancing target, so the oldest prompt always advances (no
        starvation behind decodes). A chunk cut short by the caps is tile-rounded down (never to 0).
        """
        lim = self.limits
        n = min(want, lim.token_budget - self.tokens)
        if n <= 0:
            return 0
        if lim.chunk_limit_s is not None:
            n = lim.model.max_chunk(self.tokens, self.attn, prefix=prefix, limit_s=lim.chunk_limit_s, cap=n,
                                    decode_ctx=self.dec, prefill_ctx=self.pre)
            if n == 0 and not self.has_prefill and (
                    self.tokens == 0 or lim.slo_s is None or self._within(lim.slo_s, 1, prefix + 1, decode=False)):
                n = 1
        if lim.tile and 0 < n < want:
            rounded = (self.tokens + n) // lim.tile * lim.tile - self.tokens
            if rounded >= 1:
                n = rounded
        return n

    def add_chunk(self, prefix: int, n: int) -> None:
        self.tokens += n
        self.attn += n * (prefix + n)
        self.pre += prefix + n
        self.has_prefill = True

    def _within(self, limit_s: float, n: int, context_len: int, *, decode: bool) -> bool:
        if decode:
            times = self.limits.model.stage_times(self.tokens + n, self.attn, self.dec + n * context_len, self.pre)
        else:
            times = self.limits.model.stage_times(self.tokens + n, self.attn + n * context_len, self.dec,
                                                  self.pre + context_len)
        return max(times) <= limit_s
