"""Graceful stop on SIGTERM / SIGUSR1 (what torchrun forwards and Slurm sends before a time limit or preemption).

Every rank installs the same handlers, which only note the signal: no rank dies in the middle of a micro-batch.
Rank 0 decides: its engine reads ``StopSignal.requested`` between micro-batches, stops admitting requests,
drains, and tells the other ranks through the job's store (``announce``) before it sends the stop message
round the ring; the other ranks keep serving until that message reaches them, then read the store
(``announced``) to learn that the job stopped early. Every rank then raises ``Preempted``, which
``launch.run`` turns into exit code ``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("pp_runtime")

# EX_TEMPFAIL from sysexits.h: a temporary failure, the user is invited to retry (here: to rerun and resume).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_STORE_KEY = "pp_runtime/preempted"


class Preempted(Exception):
    """The job stopped early on a signal; outputs.jsonl holds every finished request, and a rerun resumes."""


class StopSignal:
    """Notes the first SIGTERM / SIGUSR1 this process receives while installed (a context manager)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"

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


def announce(reason: str) -> None:
    """Rank 0, before the stop message goes round: tell every rank the job stopped early, and why."""
    store = _store()
    if store is not None:
        store.set(_STORE_KEY, reason)


def announced() -> str | None:
    """Other ranks, once the stop message reached them: rank 0's reason if it stopped early, else None."""
    store = _store()
    try:
        return store.get(_STORE_KEY).decode() if store is not None and store.check([_STORE_KEY]) else None
    except Exception:  # noqa: BLE001 - the store went away with rank 0: nothing announced
        return None


def _store():
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    return dist.distributed_c10d._get_default_store()
