"""Injected delays and failures (``debug.*``), for testing the tracer and failure handling."""

from __future__ import annotations

import os
import signal
import time

from pp_runtime.config import DebugConfig


class InjectedFailure(RuntimeError):
    pass


class Faults:
    def __init__(self, cfg: DebugConfig):
        self.cfg = cfg
        self._computed: dict[int, int] = {}
        self._signalled = False

    def on_compute(self, stage: int) -> None:
        """Called inside every compute step of ``stage``."""
        cfg = self.cfg
        n = self._computed.get(stage, 0)
        self._computed[stage] = n + 1
        if cfg.fail_stage == stage and n >= cfg.fail_after:
            raise InjectedFailure(f"injected failure on stage {stage} (debug.fail_stage={stage}, "
                                  f"micro-batch {n})")
        if cfg.stage_delay_ms and cfg.delay_stage == stage:
            time.sleep(cfg.stage_delay_ms / 1000)

    def on_requests_finished(self, count: int) -> None:
        """Called by rank 0 with the requests finished so far: sends debug.signal once debug.signal_after is hit."""
        if self.cfg.signal_after is not None and count >= self.cfg.signal_after and not self._signalled:
            self._signalled = True
            os.kill(os.getpid(), getattr(signal, self.cfg.signal))
