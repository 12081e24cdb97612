"""Graceful stop on SIGTERM / SIGUSR1 (what torchrun forwards and Slurm sends before a time limit or preemption).

Every rank installs the same handlers, which only note the signal: no rank dies in the middle of a micro-batch.
Rank 0 decides: its engine reads ``StopSignal.requested`` between micro-batches, stops admitting requests,
drains, and tells the other ranks through the job's store (``announce``) before it sends the stop message
round the ring; the other ranks keep serving until that message reaches them, then read the store
(``announced``) to learn that the job stopped early. Every rank then raises ``Preempted``, which
``launch.run`` turns into exit code ``EXIT_PREEMPTED``. A signal that reaches another rank only (one node's
torchrun agent was signalled) is passed to rank 0 through the store, which rank 0 reads every ``_POLL_S``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from stages.transport import store_get, store_set_once

log = logging.getLogger("pp_runtime")

# EX_TEMPFAIL from sysexits.h: a temporary failure, the user is invited to retry (here: to rerun and resume).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_STORE_KEY = "pp_runtime/preempted"
_REQUEST_KEY = "pp_runtime/stop_requested"  # a signal that reached a rank other than 0
_POLL_S = 0.2


class Preempted(Exception):
    """The job stopped early on a signal; outputs.jsonl holds every finished request, and a rerun resumes."""


class StopSignal:
    """Notes the first SIGTERM / SIGUSR1 this process receives while installed (a context manager)."""

    def __init__(self):
        self.signum: int | None = None
        self.where = ""  # " on stage <k>" when the signal reached another rank and was passed on to rank 0
        self.rank = int(os.environ.get("RANK", 0))
        self._previous: dict[int, object] = {}
        self._passed_on = False
        self._next_poll = 0.0

    @property
    def requested(self) -> bool:
        """Rank 0: whether a signal reached this rank, or (checked every _POLL_S) another one."""
        if self.signum is None and self.rank == 0 and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + _POLL_S
            passed = store_get(_REQUEST_KEY)
            if passed:
                signame, stage = passed.split()
                self.signum, self.where = signal.Signals[signame], f" on stage {stage}"
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name + self.where if self.signum is not None else "no signal"

    def pass_on(self) -> None:
        """Other ranks: tell rank 0 about a signal this rank received (once the ranks have met)."""
        if self.signum is None or self.rank == 0 or self._passed_on:
            return
        # False when rank 0 is gone: its own failure handling ends the job.
        self._passed_on = store_set_once(_REQUEST_KEY, f"{signal.Signals(self.signum).name} {self.rank}")

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM / SIGUSR1 keep their default action (no graceful stop)")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: finishing what is in flight, then stopping (rerun to resume)",
                        signal.Signals(signum).name)
            # A store call is safe here: Python runs handlers between bytecodes, never inside another store call.
            self.pass_on()


def announce(reason: str) -> None:
    """Rank 0, before the stop message goes round: tell every rank the job stopped early, and why."""
    store_set_once(_STORE_KEY, reason)


def announced() -> str | None:
    """Other ranks, once the stop message reached them: rank 0's reason if it stopped early, else None."""
    return store_get(_STORE_KEY)
