"""When requests arrive: all at once (``workload.arrival=all``) or as a seeded Poisson process (``poisson``).

Replaying a trace's own ``arrived_at`` column (``trace``) is the trace workload's business; every other
workload refuses it here.
"""

from __future__ import annotations

import numpy as np

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.workloads.random_requests import ARRIVALS, rng


def arrival_times(cfg: WorkloadConfig, n: int) -> list[float]:
    """``n`` arrival times in seconds since job start, non-decreasing, the first at 0.

    ``poisson``: exponential gaps with mean ``1 / workload.rate``, drawn from ``workload.seed``.
    """
    if cfg.arrival == "all":
        return [0.0] * n
    if cfg.arrival == "poisson":
        gaps = rng(cfg.seed, ARRIVALS).exponential(1.0 / cfg.rate, size=n)
        return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()[:n]
    raise ConfigError(f"workload.arrival={cfg.arrival!r} is invalid for workload={cfg.kind}: only the trace "
                      f"workload has arrival times to replay; use all or poisson")
