"""``scheduler.token_budget=auto``: the token budget chosen from the cost model (the knee), not guessed.

A micro-batch of ``b`` tokens costs ``c0 + c_tok * b + attention`` seconds on its bottleneck stage, so its
per-token time falls as ``b`` grows until the fixed cost ``c0`` is amortised; past that a larger budget only
makes every micro-batch (and so every decode's time between tokens) longer. ``pick_token_budget`` takes the
smallest budget whose per-token time is within ``KNEE_TOLERANCE`` of the best one's (the knee), capped so a
full micro-batch stays within ``scheduler.tbt_slo_ms`` when that is set.

Values needed before the cost model exists (profiled shapes, CUDA-graph sizes, the transport's receive buffers,
KV-cache room left after activations) use ``budget_bound``: ``AUTO_MAX_TOKEN_BUDGET`` for auto, which the
chosen budget never exceeds. Policies without a cost model (orca, vllm, static, fcfs, or sarathi with
``time_balanced=false`` and no SLO) resolve auto to ``FALLBACK_TOKEN_BUDGET``.
"""

from __future__ import annotations

from dataclasses import replace

from pp_runtime.planner.cost_model import CostModel
from pp_runtime.planner.fill import full_budget_time

AUTO = "auto"
# Largest budget auto may choose, and the budget the start-up profile times up to.
AUTO_MAX_TOKEN_BUDGET = 1024
# Smallest budget auto considers; candidates are the powers of two from here to AUTO_MAX_TOKEN_BUDGET.
AUTO_MIN_TOKEN_BUDGET = 16
# The knee: the smallest budget whose per-token time is at most (1 + this) x the best candidate's.
KNEE_TOLERANCE = 0.05
# What auto means for a policy without a cost model (the old default).
FALLBACK_TOKEN_BUDGET = 256


def is_auto(sched) -> bool:
    """Whether ``sched`` (a SchedulerConfig) asks for ``token_budget=auto``."""
    return sched.token_budget == AUTO


def budget_bound(sched) -> int:
    """The most tokens a micro-batch of this job may hold, known before any cost model exists: the budget when
    it is a number; for auto ``AUTO_MAX_TOKEN_BUDGET`` when the policy resolves it from a cost model, else
    ``FALLBACK_TOKEN_BUDGET``."""
    from pp_runtime.planner import needs_cost_model

    if not is_auto(sched):
        return int(sched.token_budget)
    return AUTO_MAX_TOKEN_BUDGET if needs_cost_model(sched) else FALLBACK_TOKEN_BUDGET


def candidate_budgets(max_budget: int, *, min_budget: int = AUTO_MIN_TOKEN_BUDGET) -> list[int]:
    """Powers of two from ``min_budget`` up to ``max_budget``, and ``max_budget`` itself, ascending."""
    out, b = [], min_budget
    while b < max_budget:
        out.append(b)
        b *= 2
    return [*out, max_budget]


def pick_token_budget(model: CostModel, *, chunk_size: int, max_budget: int = AUTO_MAX_TOKEN_BUDGET,
                      tbt_slo_ms: float | None = None, tolerance: float = KNEE_TOLERANCE) -> tuple[int, dict]:
    """The knee of ``model``'s per-token time over ``candidate_budgets(max_budget)``, and how it was found.

    A budget ``b`` is priced as the planner's balancing target prices it (``fill.full_budget_time``: ``b``
    tokens in fresh chunks of ``min(chunk_size, b)``), per token: ``t(b) / b`` seconds. The choice is the
    smallest ``b`` with ``t(b) / b <= (1 + tolerance) * min over candidates`` (on a falling curve, the largest
    budget's), then at most the largest ``b`` with ``t(b) <= tbt_slo_ms`` (the smallest candidate if none fits).
    Returns ``(budget, info)``; ``info`` holds the per-token times (us) per candidate, the tolerance and the SLO
    cap, for metrics.json, and ``slo_unmet_ms`` (the smallest budget's predicted time) when no budget meets the SLO.
    """
    budgets = candidate_budgets(max_budget)
    times = {b: full_budget_time(model, b, chunk_size) for b in budgets}
    per_token = {b: times[b] / b for b in budgets}
    best = min(per_token.values())
    knee = next(b for b in budgets if per_token[b] <= (1 + tolerance) * best)
    chosen, capped, unmet_ms = knee, None, None
    if tbt_slo_ms is not None:
        fits = [b for b in budgets if times[b] * 1e3 <= tbt_slo_ms]
        capped = fits[-1] if fits else budgets[0]
        chosen = min(knee, capped)
        if not fits:  # even the smallest budget's micro-batch is predicted over the SLO
            unmet_ms = round(times[budgets[0]] * 1e3, 3)
    info = {"knee": knee, "slo_cap": capped, "tolerance": tolerance, "chunk_size": chunk_size,
            "per_token_us": {str(b): round(per_token[b] * 1e6, 3) for b in budgets}}
    if unmet_ms is not None:
        info["slo_unmet_ms"] = unmet_ms
    return chosen, info


def resolve_token_budget(sched, model: CostModel | None) -> tuple[object, dict]:
    """``sched`` (a SchedulerConfig) with a concrete ``token_budget``, and a record of how it was chosen for
    metrics.json: ``{"value", "source": "config" | "knee" | "fallback", ...}``. Called once, on rank 0 (or by the
    simulator and pp-tune), after the cost model exists and before the planner is built."""
    if not is_auto(sched):
        return sched, {"value": int(sched.token_budget), "source": "config"}
    if model is None:
        return (replace(sched, token_budget=FALLBACK_TOKEN_BUDGET),
                {"value": FALLBACK_TOKEN_BUDGET, "source": "fallback",
                 "why": f"scheduler.policy={sched.policy} has no cost model"})
    value, info = pick_token_budget(model, chunk_size=sched.chunk_size, tbt_slo_ms=sched.tbt_slo_ms)
    return replace(sched, token_budget=value), {"value": value, "source": "knee", **info}


def describe(choice: dict) -> str:
    """One line for the log: the chosen budget and why."""
    if choice["source"] == "config":
        return f"scheduler.token_budget={choice['value']}"
    if choice["source"] == "fallback":
        return f"scheduler.token_budget=auto -> {choice['value']} ({choice['why']}; the default for auto)"
    cap = choice["slo_cap"]
    slo = f", capped to {cap} by scheduler.tbt_slo_ms" if cap is not None and cap < choice["knee"] else ""
    line = (f"scheduler.token_budget=auto -> {choice['value']} (knee of the cost model: per-token time within "
            f"{choice['tolerance']:.0%} of the best budget's{slo})")
    if choice["value"] < choice["chunk_size"]:
        line += (f"; chunks are cut to {choice['value']} tokens, below scheduler.chunk_size={choice['chunk_size']} "
                 f"(set scheduler.token_budget to keep them)")
    if choice.get("slo_unmet_ms") is not None:
        line += (f"; warning: even a {choice['value']}-token micro-batch is predicted at {choice['slo_unmet_ms']:g} "
                 f"ms, over scheduler.tbt_slo_ms: the SLO cannot be met on these stages (raise it, or use more "
                 f"pipeline.stages)")
    return line
