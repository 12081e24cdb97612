"""Drive a planner the way rank 0 does, in virtual time: the contract between the runtime and a planner.

Keep up to ``planner.num_slots`` micro-batches in flight: ``schedule`` until it returns None or the pipeline
is full, then the oldest micro-batch comes back and is ``postprocess``-ed with one token per sampling piece.
With nothing in flight and nothing schedulable, time jumps to the next arrival. Tests, benchmarks and the
simulator run planners through this loop without any model or process group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner.base import Planner


class PlannerStuck(RuntimeError):
    """The planner has unfinished requests but produces no micro-batch and expects no arrival."""


def drive(planner: Planner, sample: Callable[[Piece], int], *,
          duration_s: Callable[[MicroBatch], float] = lambda mb: 1e-3,
          on_schedule: Callable[[MicroBatch], None] = lambda mb: None,
          on_return: Callable[[MicroBatch], None] = lambda mb: None,
          max_micro_batches: int = 1_000_000) -> int:
    """Run ``planner`` until every request finishes; returns the number of micro-batches.

    ``sample(piece)`` gives the token sampled from a piece; ``duration_s(mb)`` how far the clock moves when
    ``mb`` returns. ``on_schedule`` sees each micro-batch as it launches, ``on_return`` before it is folded
    back. Raises PlannerStuck if the planner stalls or needs more than ``max_micro_batches``.
    """
    in_flight: deque[MicroBatch] = deque()
    now = 0.0
    launched = 0
    while planner.has_unfinished():
        while len(in_flight) < planner.num_slots:
            mb = planner.schedule(now)
            if mb is None:
                break
            launched += 1
            if launched > max_micro_batches:
                raise PlannerStuck(f"{type(planner).__name__} needed more than {max_micro_batches} micro-batches; "
                                   f"{len(planner.running)} running, {len(planner.waiting)} waiting")
            on_schedule(mb)
            in_flight.append(mb)
        if in_flight:
            mb = in_flight.popleft()
            now += duration_s(mb)
            on_return(mb)
            planner.postprocess(mb, [sample(p) for p in mb.pieces if p.sample], now)
            continue
        wake = planner.next_arrival_s()
        if wake is None:
            raise PlannerStuck(f"{type(planner).__name__} is stuck at t={now:.3f}s: nothing in flight, nothing "
                               f"schedulable, no arrival ahead; running={list(planner.running)} "
                               f"waiting={list(planner.waiting)[:8]}")
        now = max(now, wake)
    return launched
