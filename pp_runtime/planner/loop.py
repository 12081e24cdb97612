"""Rank 0's loop, the one contract between a planner and whatever runs its micro-batches; a ``Clock`` runs them.

Keep up to ``planner.num_slots`` micro-batches in flight: ``schedule`` until it returns None or the pipeline
is full, then the oldest micro-batch comes back and is ``postprocess``-ed with one token per sampling piece.
With nothing in flight and nothing schedulable, the clock waits for the next arrival. After a stop request
(``Clock.stop_requested``, checked between micro-batches) no request is admitted; the running ones are served
for up to ``drain_timeout_s``, and the micro-batches in flight come back.

The clock says what planning, launching and receiving cost, and where the tokens come from: the runtime's
engine (``stages/engine.py``: wall time, real stages, a stop signal), the simulator (``pp_runtime.sim``: every
stage in virtual time), or ``SerialClock`` (tests and benchmarks: micro-batches come back one after another).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner.base import Planner
from pp_runtime.sequence import Sequence


class PlannerStuck(RuntimeError):
    """The planner has unfinished requests but produces no micro-batch and expects no arrival, or it needed
    more micro-batches than allowed."""


class Clock(Protocol):
    """Rank 0's time and stages. ``launch`` returns a handle that ``receive`` and ``tokens`` get back."""

    def seconds(self) -> float:
        """The current time in seconds, as the planner reads it."""

    def schedule(self, planner: Planner) -> MicroBatch | None:
        """``planner.schedule`` at the current time, charging what planning costs."""

    def launch(self, mb: MicroBatch) -> object | None:
        """Run ``mb`` on stage 0 and send it on; returns what ``receive`` needs to know when its tokens come
        back, or None if they are there at once (folded before anything else is launched)."""

    def receive(self, mb: MicroBatch, handle: object | None) -> None:
        """Wait for ``mb``'s tokens (the clock moves to when they are back)."""

    def tokens(self, mb: MicroBatch, handle: object | None) -> list[int]:
        """``mb``'s sampled token ids, one per sampling piece in piece order, once ``receive`` returned."""

    def wait_for_arrival(self, arrival_s: float) -> None:
        """Nothing in flight, nothing schedulable: move on to the next arrival (a real clock may return early,
        e.g. for a stop request; the loop then looks again)."""

    def stop_requested(self) -> bool:
        """Whether to stop admitting requests and drain."""


@dataclass(frozen=True)
class LoopResult:
    micro_batches: int  # launched
    stopped_early: bool  # a stop request ended the loop with requests unfinished


def run(planner: Planner, clock: Clock, *, on_schedule: Callable[[MicroBatch], None] = lambda mb: None,
        on_return: Callable[[MicroBatch], None] = lambda mb: None,
        on_finish: Callable[[Sequence], None] = lambda seq: None,
        max_micro_batches: int | None = None, drain_timeout_s: float = 0.0) -> LoopResult:
    """Serve every request ``planner`` holds on ``clock``.

    ``on_schedule`` sees each micro-batch before it launches, ``on_return`` after it came back and before its
    tokens are read and folded in; ``on_finish`` each sequence the planner finishes. Raises PlannerStuck if the
    planner stalls, or needs more than ``max_micro_batches`` (None: no limit).
    """
    in_flight: deque[tuple[MicroBatch, object]] = deque()
    launched = 0
    drain_until = None  # set by a stop request: serve the running requests until then, admit none

    def fold(mb: MicroBatch, handle: object | None) -> None:
        clock.receive(mb, handle)
        on_return(mb)
        for seq in planner.postprocess(mb, clock.tokens(mb, handle), clock.seconds()):
            on_finish(seq)

    while planner.has_unfinished():
        if drain_until is None and clock.stop_requested():
            planner.close_admission()
            drain_until = clock.seconds() + drain_timeout_s
        if drain_until is not None and (clock.seconds() >= drain_until or not planner.running):
            break
        if len(in_flight) < planner.num_slots:
            mb = clock.schedule(planner)
            if mb is not None:
                launched += 1
                if max_micro_batches is not None and launched > max_micro_batches:
                    raise PlannerStuck(f"{type(planner).__name__} needed more than {max_micro_batches} "
                                       f"micro-batches; {len(planner.running)} running, {len(planner.waiting)} waiting")
                on_schedule(mb)
                handle = clock.launch(mb)
                if handle is None:  # one stage, in virtual time: the tokens are there at once
                    fold(mb, None)
                else:
                    in_flight.append((mb, handle))
                continue
        if in_flight:
            fold(*in_flight.popleft())
            continue
        if drain_until is not None:
            break  # nothing runs, nothing in flight: only requests that may not be admitted are left
        wake = planner.next_arrival_s()
        if wake is None:
            raise PlannerStuck(f"{type(planner).__name__} is stuck at t={clock.seconds():.6f}s: nothing in flight, "
                               f"nothing schedulable, no arrival ahead; running={list(planner.running)} "
                               f"waiting={list(planner.waiting)[:8]}")
        clock.wait_for_arrival(wake)
    while in_flight:  # stopped early: what was sent still comes back, and may finish requests
        fold(*in_flight.popleft())
    return LoopResult(launched, planner.has_unfinished())


class VirtualClock:
    """Shared by the clocks of virtual time: tokens come from ``sample(piece)``, stop is never requested, an
    arrival is reached by jumping to it."""

    sample: Callable[[Piece], int]

    def tokens(self, mb: MicroBatch, handle: object | None) -> list[int]:
        return [self.sample(p) for p in mb.pieces if p.sample]

    def stop_requested(self) -> bool:
        return False


class SerialClock(VirtualClock):
    """Seconds; planning and launching are free and micro-batches come back one after another, each
    ``duration_s(mb)`` after the previous one (or after its launch, if the pipeline was empty)."""

    def __init__(self, duration_s: Callable[[MicroBatch], float], sample: Callable[[Piece], int]):
        self.duration_s, self.sample = duration_s, sample
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

    def wait_for_arrival(self, arrival_s: float) -> None:
        self.now = max(self.now, arrival_s)


def drive(planner: Planner, sample: Callable[[Piece], int], *,
          duration_s: Callable[[MicroBatch], float] = lambda mb: 1e-3,
          on_schedule: Callable[[MicroBatch], None] = lambda mb: None,
          on_return: Callable[[MicroBatch], None] = lambda mb: None,
          max_micro_batches: int = 1_000_000) -> int:
    """``run`` on a ``SerialClock``: tests and benchmarks drive a planner in virtual time without stages.

    ``sample(piece)`` gives the token sampled from a piece; ``duration_s(mb)`` how far the clock moves when
    ``mb`` returns. Returns the number of micro-batches; raises PlannerStuck as ``run``.
    """
    return run(planner, SerialClock(duration_s, sample), on_schedule=on_schedule, on_return=on_return,
               max_micro_batches=max_micro_batches).micro_batches
