"""Micro-batch planners. ``make_planner`` picks the policy named by ``scheduler.policy``.

sarathi (default): chunked prefills + stall-free decodes, balanced by a cost model across in-flight slots.
orca: iteration-level batching, whole prompts. vllm: prefill-first, never mixed. static: request-level
batches. fcfs: the simple token-budget baseline. throttle: gLLM's token throttling on top of sarathi.
"""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.planner.cost_model import CostModel, CostModelError, profile_points
from pp_runtime.planner.fcfs import FcfsPlanner
from pp_runtime.planner.orca import OrcaPlanner
from pp_runtime.planner.sarathi import SarathiPlanner
from pp_runtime.planner.static import StaticPlanner
from pp_runtime.planner.throttle import ThrottlePlanner
from pp_runtime.planner.vllm import VllmPlanner

_POLICIES: dict[str, type[Planner]] = {
    "sarathi": SarathiPlanner, "orca": OrcaPlanner, "vllm": VllmPlanner, "static": StaticPlanner,
    "fcfs": FcfsPlanner, "throttle": ThrottlePlanner,
}


def needs_cost_model(cfg) -> bool:
    """Whether the policy of ``cfg`` (a SchedulerConfig) uses predicted times: SARATHI's time balancing or SLO."""
    return cfg.policy in ("sarathi", "throttle") and (cfg.time_balanced or cfg.tbt_slo_ms is not None)


def make_planner(cfg, **kwargs) -> Planner:
    """Build the planner for ``cfg.policy`` (a SchedulerConfig); kwargs go to ``Planner.__init__``."""
    try:
        cls = _POLICIES[cfg.policy]
    except KeyError:
        raise ValueError(f"scheduler.policy={cfg.policy!r} has no planner; use one of {sorted(_POLICIES)}") from None
    return cls(cfg, **kwargs)


__all__ = ["CostModel", "CostModelError", "Planner", "make_planner", "needs_cost_model", "profile_points"]
