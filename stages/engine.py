"""Rank 0's clock of the planner loop (``pp_runtime/planner/loop.py``): wall time, real stages, a stop signal.

``planner.loop.run`` keeps up to ``pipeline.depth`` micro-batches in flight, so every stage has work; this clock
plans on the wall clock, runs stage 0, sends the micro-batch down the pipeline and reads its sampled tokens
only when the loop folds it back (with one stage the whole model runs in place, and with depth > 1 the next
micro-batch is launched before this one's tokens are read). Each plan goes to every stage before stage 0
computes it, so they post their receives meanwhile. With a vocabulary-parallel LM head, rank 0 computes its half
of the head when it reads a micro-batch's tokens (a second COMPUTE event of that micro-batch on stage 0, with no
tokens counted). While waiting for an arrival (online mode) it sleeps, waking for a stop signal (``StopSignal``).
``Engine.run`` then sends every stage the stop message, so every stage ends cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pp_runtime.plan import MicroBatch
from pp_runtime.planner import Planner
from pp_runtime.planner.loop import run
from pp_runtime.sequence import Sequence
from pp_runtime.trace.tracer import EventKind, Tracer
from stages.executor import SampledTokens, StageExecutor
from stages.faults import Faults
from stages.preemption import StopSignal, announce
from stages.transport import Transport, failure_message

_POLL_S = 0.05  # longest sleep between checks of the stop signal while waiting for an arrival (online mode)


class WallClock:
    """The ``Clock`` of a real run: seconds since ``start``, stage 0 on this rank, the rest over ``transport``."""

    def __init__(self, executor: StageExecutor, transport: Transport | None, tracer: Tracer, *, faults: Faults,
                 stop: StopSignal | None):
        self.executor, self.transport, self.tracer, self.faults, self.stop = executor, transport, tracer, faults, stop
        self.start = time.monotonic()
        self._tokens: dict[int, list[int]] = {}  # mb id -> sampled ids received from the last stage

    def seconds(self) -> float:
        return time.monotonic() - self.start

    def schedule(self, planner: Planner) -> MicroBatch | None:
        t0 = self.tracer.now_ns()
        mb = planner.schedule(self.seconds())
        self.tracer.record(EventKind.PLAN, t0, self.tracer.now_ns(), -1 if mb is None else mb.id)
        return mb

    def launch(self, mb: MicroBatch):
        """Send the plan ahead to every stage, post the receive of its tokens, compute stage 0 and send the
        activations on; returns this rank's own sampled tokens (one stage), else the posted token receive."""
        handle = None
        if self.transport is not None:
            self.transport.send_plan(mb)  # the other stages post their receives while stage 0 computes
            handle = self.transport.post_tokens(mb)
        with self.tracer.span(EventKind.COMPUTE, mb.id, mb.num_prefill_tokens, mb.num_decode_tokens):
            self.faults.on_compute(0)
            out = self.executor.execute(mb)
        if self.transport is None:  # one stage: out holds the sampled tokens, read when the loop needs them
            return out
        self.transport.send_activation(mb.id, out)
        return handle

    def receive(self, mb: MicroBatch, handle) -> None:
        if self.transport is None:  # one stage: SampledTokens.result() waits in tokens()
            return
        got = self.transport.wait_tokens(handle)
        if self.executor.head_split is not None:  # this stage's half of the LM head, then the merge
            with self.tracer.span(EventKind.COMPUTE, mb.id, 0, 0):
                got = self.executor.finish_head(mb, got).result()
        self._tokens[mb.id] = got

    def tokens(self, mb: MicroBatch, handle) -> list[int]:
        """The sampled ids: from this rank's own last stage, or from the last rank."""
        return handle.result() if isinstance(handle, SampledTokens) else self._tokens.pop(mb.id)

    def wait_for_arrival(self, arrival_s: float) -> None:
        """Sleep until ``arrival_s``, waking early for a stop signal."""
        while (left := arrival_s - self.seconds()) > 0 and not self.stop_requested():
            time.sleep(min(_POLL_S, left))

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested

    def close(self, *, stopped_early: bool) -> None:
        """Send the stop message to every stage and wait until every send has been received."""
        if self.transport is None:
            return
        if stopped_early:
            # Before the stop message reaches the others; a signal passed on from another rank names its stage.
            name = self.stop.name
            announce(f"stopped by {name}" + ("" if " on stage " in name else " on stage 0"))
        self.transport.send_stop()
        self.transport.flush()


class Engine:
    """Rank 0's job loop: ``planner.loop.run`` on a ``WallClock``, then the stop message round the pipeline."""

    def __init__(self, planner: Planner, executor: StageExecutor, transport: Transport | None, tracer: Tracer, *,
                 depth: int, faults: Faults, on_finish: Callable[[Sequence], None] = lambda s: None,
                 stop: StopSignal | None = None, drain_timeout_s: float = 0.0):
        if depth != planner.num_slots:
            raise ValueError(f"pipeline.depth={depth} but the planner keeps {planner.num_slots} slots")
        self.planner = planner
        self.clock = WallClock(executor, transport, tracer, faults=faults, stop=stop)
        self.on_finish = on_finish
        self.drain_timeout_s = drain_timeout_s
        self.stopped_early = False  # a stop signal ended the run with requests unfinished

    def run(self) -> float:
        """Serve every request the planner holds; returns the wall time in seconds."""
        self.clock.start = time.monotonic()
        try:
            result = run(self.planner, self.clock, on_finish=self.on_finish, drain_timeout_s=self.drain_timeout_s)
        except BaseException as exc:
            if self.clock.transport is not None:
                self.clock.transport.abort(failure_message() or f"stage 0 failed: {type(exc).__name__}: {exc}")
            raise
        self.stopped_early = result.stopped_early
        self.clock.close(stopped_early=result.stopped_early)
        return self.clock.seconds()
