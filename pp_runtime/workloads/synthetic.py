"""Requests with random lengths and random tokens (``workload=synthetic``).

Prompt lengths have mean ``workload.prefill_len`` and output lengths mean ``prefill_len / pd_ratio``, both from
``workload.distribution``:

- ``uniform``: integers uniform in [1, 2 * mean - 1];
- ``zipf``: numpy's Zipf with a = 1.5, clipped at ``_ZIPF_CLIP`` and scaled so the clipped distribution's mean
  is ``mean`` (a heavy tail reaching about 6.8 times the mean);
- ``lognormal``: sigma 1, mu chosen so the mean is ``mean``.

Lengths are rounded and at least 1; a pair longer than ``model.max_model_len`` is trimmed (see
``requests_from_lengths``). Arrivals: ``workload.arrival`` all or poisson.
"""

from __future__ import annotations

import numpy as np

from pp_runtime.config import WorkloadConfig
from pp_runtime.request import Request
from pp_runtime.workloads.arrivals import arrival_times
from pp_runtime.workloads.random_requests import LENGTHS, requests_from_lengths, rng

_ZIPF_A = 1.5
# Zipf(1.5) has no finite mean; clipping the raw draw here gives it one (about 14.7).
_ZIPF_CLIP = 100


def load_synthetic(cfg: WorkloadConfig, *, max_model_len: int, vocab_size: int) -> list[Request]:
    """``cfg.num_requests`` random requests; ids ``synthetic-0``, ``synthetic-1``, ..."""
    arrivals = arrival_times(cfg, cfg.num_requests)
    gen = rng(cfg.seed, LENGTHS)
    prompt_lens = draw_lengths(cfg.distribution, cfg.prefill_len, cfg.num_requests, gen)
    output_lens = draw_lengths(cfg.distribution, cfg.prefill_len / cfg.pd_ratio, cfg.num_requests, gen)
    return requests_from_lengths(prompt_lens, output_lens, arrivals, prefix="synthetic", seed=cfg.seed,
                                 max_model_len=max_model_len, vocab_size=vocab_size)


def draw_lengths(distribution: str, mean: float, n: int, gen: np.random.Generator) -> list[int]:
    """``n`` positive integer lengths from ``distribution`` with mean about ``mean``."""
    if distribution == "uniform":
        high = max(1, round(2 * mean - 1))
        x = gen.integers(1, high + 1, size=n)
    elif distribution == "zipf":
        x = np.minimum(gen.zipf(_ZIPF_A, size=n), _ZIPF_CLIP) * (mean / _clipped_zipf_mean())
    elif distribution == "lognormal":
        sigma = 1.0
        x = gen.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=n)
    else:
        raise ValueError(f"workload.distribution={distribution!r} is invalid: use uniform, zipf or lognormal")
    return np.maximum(1, np.rint(x)).astype(int).tolist()


def _clipped_zipf_mean() -> float:
    """E[min(Z, _ZIPF_CLIP)] for Z ~ Zipf(_ZIPF_A), computed exactly from the probability mass function."""
    k = np.arange(1, _ZIPF_CLIP, dtype=float)
    pmf = k**-_ZIPF_A / _zeta(_ZIPF_A)
    return float((k * pmf).sum() + _ZIPF_CLIP * (1.0 - pmf.sum()))


def _zeta(s: float) -> float:
    """Riemann zeta(s) for s > 1: a partial sum plus the Euler-Maclaurin tail (error far below 1e-12)."""
    n = 1000
    head = (np.arange(1, n, dtype=float) ** -s).sum()
    return float(head + n ** (1 - s) / (s - 1) + 0.5 * n**-s + s * n ** (-s - 1) / 12)
