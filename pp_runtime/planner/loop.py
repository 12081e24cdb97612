"""Drive a planner the way rank 0 does, in virtual time: the contract between the runtime and a planner.

Keep up to ``planner.num_slots`` micro-batches in flight: ``schedule`` until it returns None or the pipeline
is full, then the oldest micro-batch comes back and is ``postprocess``-ed with one token per sampling piece.
With nothing in flight and nothing schedulable, time jumps to the next arrival. This is ``stages/engine.py``'s
loop with the clock left open: a ``Clock`` says what planning, launching and receiving cost. Tests and
benchmarks use the default serial clock; the simulator (``pp_runtime.sim``) one that models every stage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner.base import Planner


class PlannerStuck(RuntimeError):
    """The planner has unfinished requests but produces no micro-batch and expects no arrival."""


class Clock(Protocol):
    """Rank 0's time, in the clock's own unit (``launch`` and ``receive`` speak it; ``seconds`` converts)."""

    def seconds(self) -> float:
        """The current time in seconds, as the planner reads it."""

    def schedule(self, planner: Planner) -> MicroBatch | None:
        """``planner.schedule`` at the current time, charging what planning costs."""

    def launch(self, mb: MicroBatch) -> object:
        """Run ``mb`` on stage 0 and send it on; returns what ``receive`` needs to know when its tokens come back
        (e.g. that time), or None if they are there at once."""

    def receive(self, mb: MicroBatch, back: object) -> None:
        """Wait for ``mb``'s tokens; ``back`` is what ``launch`` returned."""

    def jump_to(self, arrival_s: float) -> None:
        """Nothing in flight: move to the next arrival."""


class SerialClock:
    """Seconds; planning and launching are free and micro-batches come back one after another, each
    ``duration_s(mb)`` after the previous one (or after its launch, if the pipeline was empty)."""

    def __init__(self, duration_s: Callable[[MicroBatch], float]):
        self.duration_s = duration_s
        self.now = 0.0
        self._last_back = 0.0

    def seconds(self) -> float:
        return self.now

    def schedule(self, planner: Planner) -> MicroBatch | None:
        return planner.schedule(self.now)

    def launch(self, mb: MicroBatch) -> float:
        self._last_back = max(self._last_back, self.now) + self.duration_s(mb)
        return self._last_back

    def receive(self, mb: MicroBatch, back: float) -> None:
        self.now = max(self.now, back)

    def jump_to(self, arrival_s: float) -> None:
        self.now = max(self.now, arrival_s)


def drive(planner: Planner, sample: Callable[[Piece], int], *,
          duration_s: Callable[[MicroBatch], float] = lambda mb: 1e-3,
          on_schedule: Callable[[MicroBatch], None] = lambda mb: None,
          on_return: Callable[[MicroBatch], None] = lambda mb: None,
          max_micro_batches: int = 1_000_000, clock: Clock | None = None) -> int:
    """Run ``planner`` until every request finishes; returns the number of micro-batches.

    ``sample(piece)`` gives the token sampled from a piece; ``duration_s(mb)`` how far the clock moves when
    ``mb`` returns (the default ``SerialClock``; ``clock`` replaces it). ``on_schedule`` sees each micro-batch as
    it launches, ``on_return`` before it is folded back. Raises PlannerStuck if the planner stalls or needs more
    than ``max_micro_batches``.
    """
    clock = clock if clock is not None else SerialClock(duration_s)
    in_flight: deque[tuple[MicroBatch, object]] = deque()
    launched = 0
    while planner.has_unfinished():
        if len(in_flight) < planner.num_slots:
            mb = clock.schedule(planner)
            if mb is not None:
                launched += 1
                if launched > max_micro_batches:
                    raise PlannerStuck(f"{type(planner).__name__} needed more than {max_micro_batches} "
                                       f"micro-batches; {len(planner.running)} running, {len(planner.waiting)} waiting")
                on_schedule(mb)
                back = clock.launch(mb)
                if back is None:  # one stage: the tokens are there at once, as in stages/engine.py
                    _fold(planner, mb, sample, clock, on_return)
                else:
                    in_flight.append((mb, back))
                continue
        if in_flight:
            mb, back = in_flight.popleft()
            clock.receive(mb, back)
            _fold(planner, mb, sample, clock, on_return)
            continue
        wake = planner.next_arrival_s()
        if wake is None:
            raise PlannerStuck(f"{type(planner).__name__} is stuck at t={clock.seconds():.6f}s: nothing in flight, "
                               f"nothing schedulable, no arrival ahead; running={list(planner.running)} "
                               f"waiting={list(planner.waiting)[:8]}")
        clock.jump_to(wake)
    return launched


def _fold(planner: Planner, mb: MicroBatch, sample, clock: Clock, on_return) -> None:
    on_return(mb)
    planner.postprocess(mb, [sample(p) for p in mb.pieces if p.sample], clock.seconds())
