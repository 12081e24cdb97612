"""Micro-batch planners. ``make_planner`` picks the policy named by ``scheduler.policy``."""

from __future__ import annotations

from pp_runtime.planner.base import Planner
from pp_runtime.planner.fcfs import FcfsPlanner

_POLICIES: dict[str, type[Planner]] = {"fcfs": FcfsPlanner}


def make_planner(cfg, **kwargs) -> Planner:
    """Build the planner for ``cfg.policy`` (a SchedulerConfig); kwargs go to ``Planner.__init__``."""
    try:
        cls = _POLICIES[cfg.policy]
    except KeyError:
        raise ValueError(f"scheduler.policy={cfg.policy!r} has no planner; use one of {sorted(_POLICIES)}") from None
    return cls(cfg, **kwargs)


__all__ = ["Planner", "make_planner"]
