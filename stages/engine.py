"""Rank 0's loop: plan a micro-batch, run stage 0 on it, send it down the pipeline, fold tokens back.

Up to ``depth`` micro-batches are in flight, so every stage has work; rank 0 plans the next micro-batch while
the later stages compute the earlier ones. With one stage the loop runs the whole model in place, and its sampled
tokens are read only when the loop needs them (with depth > 1 the next micro-batch is launched first).

After a stop signal (``StopSignal``, checked between micro-batches) no request is admitted; the running ones
are served for up to ``drain_timeout_s``, the micro-batches in flight come back, and the stop message goes
round as usual, so every stage ends cleanly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from pp_runtime.plan import MicroBatch
from pp_runtime.planner import Planner
from pp_runtime.sequence import Sequence
from pp_runtime.trace.tracer import EventKind, Tracer
from stages.executor import SampledTokens, StageExecutor
from stages.faults import Faults
from stages.preemption import StopSignal, announce
from stages.transport import STOP, PipelineError, Transport

_POLL_S = 0.05  # longest sleep between checks of the stop signal while waiting for an arrival (online mode)


class Engine:
    def __init__(self, planner: Planner, executor: StageExecutor, transport: Transport | None, tracer: Tracer, *,
                 depth: int, faults: Faults, on_finish: Callable[[Sequence], None] = lambda s: None,
                 stop: StopSignal | None = None, drain_timeout_s: float = 0.0):
        self.planner = planner
        self.executor = executor
        self.transport = transport
        self.tracer = tracer
        self.depth = depth
        self.faults = faults
        self.on_finish = on_finish
        self.stop = stop
        self.drain_timeout_s = drain_timeout_s
        self.stopped_early = False  # a stop signal ended the run with requests unfinished

    def run(self) -> float:
        """Serve every request the planner holds; returns the wall time in seconds."""
        planner, tracer = self.planner, self.tracer
        start = time.monotonic()
        in_flight: deque[tuple[MicroBatch, SampledTokens | None]] = deque()
        drain_until = None  # set by a stop signal: serve the running requests until then, admit none
        while planner.has_unfinished():
            now = time.monotonic() - start
            if drain_until is None and self.stop is not None and self.stop.requested:
                planner.close_admission()
                drain_until = now + self.drain_timeout_s
            if drain_until is not None and (now >= drain_until or not planner.running):
                break
            if len(in_flight) < self.depth:
                t0 = tracer.now_ns()
                mb = planner.schedule(now)
                tracer.record(EventKind.PLAN, t0, tracer.now_ns(), -1 if mb is None else mb.id)
                if mb is not None:
                    self._launch(mb, in_flight)
                    continue
            if in_flight:
                self._receive(in_flight, start)
                continue
            if drain_until is not None:
                break  # nothing runs, nothing in flight: only requests that may not be admitted are left
            wake = planner.next_arrival_s()
            if wake is None:
                raise RuntimeError(f"planner is stuck: nothing in flight, nothing schedulable, "
                                   f"{len(planner.running)} running, {len(planner.waiting)} waiting")
            self._sleep_until(wake, start)  # online mode: wait for the next arrival
        while in_flight:  # stopped early: what was sent still comes back, and may finish requests
            self._receive(in_flight, start)
        self.stopped_early = planner.has_unfinished()
        if self.transport is not None:
            if self.stopped_early:
                announce(f"stopped by {self.stop.name} on stage 0")  # before the stop message reaches the others
            self.transport.send_stop()
            if self.transport.recv().kind != STOP:
                raise PipelineError("stage 0 expected the stop message to come back round the pipeline")
            self.transport.flush()
        return time.monotonic() - start

    def _sleep_until(self, wake_s: float, start: float) -> None:
        """Sleep until ``wake_s`` (seconds since ``start``), waking early for a stop signal."""
        while (left := wake_s - (time.monotonic() - start)) > 0 and not (self.stop is not None and self.stop.requested):
            time.sleep(min(_POLL_S, left))

    def _receive(self, in_flight: deque, start: float) -> None:
        """Fold the oldest micro-batch in flight back into the planner."""
        mb, tokens = in_flight.popleft()
        self._finish(self.planner.postprocess(mb, self._tokens(mb, tokens), time.monotonic() - start))

    def _launch(self, mb: MicroBatch, in_flight: deque) -> None:
        with self.tracer.span(EventKind.COMPUTE, mb.id, mb.num_prefill_tokens, mb.num_decode_tokens):
            self.faults.on_compute(0)
            out = self.executor.execute(mb)
        if self.transport is None:  # one stage: out holds the sampled tokens, read when the loop needs them
            in_flight.append((mb, out))
        else:
            self.transport.send(mb.id, mb, out)
            in_flight.append((mb, None))

    def _tokens(self, mb: MicroBatch, tokens: SampledTokens | None) -> list[int]:
        """The sampled ids of the oldest micro-batch in flight: from this rank's own last stage, or from the
        last rank."""
        if tokens is not None:
            return tokens.result()
        msg = self.transport.recv()
        if msg.kind == STOP or msg.mb_id != mb.id:
            raise PipelineError(f"stage 0 expected tokens of micro-batch {mb.id}, got {msg}")
        return msg.meta

    def _finish(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.on_finish(seq)
