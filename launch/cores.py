"""Each rank of a CPU job on its own cores (``runtime.pin_cores``).

A balanced pipeline keeps every rank computing. On the CPU the ranks' helper threads (gloo's I/O threads, the
plan thread of ``stages/transport.py``) then have no idle core to wake on: the scheduler puts a woken helper of
stage 1 on the core of the rank that woke it (rank 0, sending a plan) and rank 0 waits about a millisecond. On
the 2-core VM of docs/BENCHMARKS.md this was 1-3 ms of hop per micro-batch on the prefill mix (one rank per core:
0.5-0.6 ms). Each rank's threads stay on its own cores instead: a rank's helpers take their time from that rank.
The mask is set on the rank's main thread before its process groups exist, so every thread started later
(gloo's, torch's, the plan thread) inherits it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pp_runtime.config import ConfigError

log = logging.getLogger("pp_runtime")


def rank_cores(available: list[int], *, local_rank: int, local_world_size: int, threads: int) -> list[int] | None:
    """The cores of ``local_rank``: ``threads`` of ``available`` (sorted), the ranks of the node in order; None when
    the node's ranks times ``threads`` do not fit ``available``."""
    if local_world_size * threads > len(available):
        return None
    cores = sorted(available)
    return cores[local_rank * threads:(local_rank + 1) * threads]


@contextmanager
def pinned(setting, *, device_type: str, local_rank: int, local_world_size: int, threads: int) -> Iterator[None]:
    """Keep this thread (and the threads it starts) on this rank's cores while the block runs, then restore its
    mask. ``setting`` is ``runtime.pin_cores``: auto (on the CPU with 2+ ranks on the node, when they fit the
    cores), true (raises ConfigError when they do not fit) or false."""
    auto_off = device_type != "cpu" or local_world_size < 2
    if setting is False or (setting == "auto" and auto_off) or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    cores = rank_cores(list(before), local_rank=local_rank, local_world_size=local_world_size, threads=threads)
    shown = str(setting).lower()
    if cores is None:
        if setting is True:
            fix = "run fewer ranks on this node" if threads == 1 else "lower runtime.threads"
            raise ConfigError(f"runtime.pin_cores=true but {local_world_size} rank(s) x runtime.threads={threads} "
                              f"need more than the {len(before)} core(s) this process may use; {fix}, or set "
                              f"runtime.pin_cores=auto (pins only when they fit) or false")
        log.info("rank %d: not pinned: %d rank(s) x runtime.threads=%d do not fit the %d core(s) this job may use "
                 "(runtime.pin_cores=auto)", local_rank, local_world_size, threads, len(before))
        yield
        return
    log.info("rank %d: threads on core(s) %s (runtime.pin_cores=%s)", local_rank, ",".join(map(str, cores)), shown)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
