"""pp-tune's search: candidate configs, their simulated metrics, the SLO filter, the Pareto frontier, the winner.

Pure logic over an ``evaluate(candidate) -> metrics`` callable (``launch.tune`` simulates; tests inject a fake):
throughput is ``output_throughput`` and the time between tokens ``p99_itl_ms``, as ``compute_metrics`` names
them. A candidate is feasible when its p99 TBT (and p99 TTFT, when asked) meets the SLO and it completes as many
requests as the best candidate does (none wins by rejecting work).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

THROUGHPUT, TBT, TTFT = "output_throughput", "p99_itl_ms", "p99_ttft_ms"


class TuneError(ValueError):
    """No candidate meets the SLO, or the search is malformed; the message names the option to change."""


@dataclass(frozen=True)
class Candidate:
    token_budget: int
    chunk_size: int
    num_microbatches: int
    layers_per_stage: tuple[int, ...]

    def overrides(self) -> dict[str, dict]:
        """The config values this candidate sets, by group."""
        return {"scheduler": {"token_budget": self.token_budget, "chunk_size": self.chunk_size},
                "pipeline": {"stages": len(self.layers_per_stage), "num_microbatches": self.num_microbatches,
                             "layers_per_stage": list(self.layers_per_stage)}}

    def __str__(self) -> str:
        return (f"budget={self.token_budget} chunk={self.chunk_size} microbatches={self.num_microbatches} "
                f"split={list(self.layers_per_stage)}")


@dataclass(frozen=True)
class Trial:
    candidate: Candidate
    metrics: dict

    @property
    def throughput(self) -> float:
        return float(self.metrics.get(THROUGHPUT) or 0.0)

    def p99(self, key: str) -> float:
        """A p99 latency in ms; None (nothing measured, e.g. no second token) counts as 0."""
        return float(self.metrics.get(key) or 0.0)


@dataclass
class TuneResult:
    trials: list[Trial]
    frontier: list[Trial]  # Pareto set on (throughput up, p99 TBT down), by throughput
    winner: Trial
    default: Trial


def powers_around(value: int, *, below: int = 2, above: int = 2, floor: int = 1) -> list[int]:
    """``value`` times 2**k for k in -below..above, at least ``floor``, sorted and distinct."""
    return sorted({max(floor, round(value * 2.0 ** k)) for k in range(-below, above + 1)})


def candidates(*, token_budget: int, chunk_size: int, num_microbatches: int, num_stages: int,
               splits: Sequence[Sequence[int]]) -> list[Candidate]:
    """The grid: budgets and chunks as powers of two around the defaults (chunk <= budget), micro-batches in
    flight from ``num_stages`` to twice the default, and ``splits``. The default comes first."""
    budgets = powers_around(token_budget, floor=16)
    chunks = sorted(set(powers_around(chunk_size, floor=16)) | set(budgets))
    depths = sorted({num_stages, num_microbatches, num_microbatches + 1, 2 * num_microbatches})
    default = Candidate(token_budget, min(chunk_size, token_budget), num_microbatches, tuple(splits[0]))
    grid = [Candidate(b, c, d, tuple(s)) for b, c, d, s in itertools.product(budgets, chunks, depths, splits)
            if c <= b and d >= num_stages]
    return [default, *[c for c in grid if c != default]]


def search(evaluate: Callable[[Candidate], dict], grid: list[Candidate], *, tbt_slo_ms: float,
           ttft_slo_ms: float | None = None, max_sims: int = 60, keep: int = 3, min_gain: float = 0.0) -> TuneResult:
    """Simulate candidates of ``grid`` (its first is the default) and pick the fastest that meets the SLO.

    The default stays the winner when it meets the SLO and the fastest is less than ``min_gain`` (a fraction)
    faster: a gain inside the simulator's error is not worth a change.

    At most ``max_sims`` simulations: when the grid is larger, first every (budget, chunk) at the default depth
    and split, then the ``keep`` best feasible of those with every depth and split.
    """
    if tbt_slo_ms <= 0:
        raise TuneError(f"--tbt-slo-ms={tbt_slo_ms} must be > 0")
    default = grid[0]
    if len(grid) <= max_sims:
        order = grid
    else:
        order = [c for c in grid if (c.num_microbatches, c.layers_per_stage) ==
                 (default.num_microbatches, default.layers_per_stage)]
    trials = {c: Trial(c, evaluate(c)) for c in order[:max_sims]}
    if len(grid) > max_sims:
        ok = _feasible(list(trials.values()), tbt_slo_ms, ttft_slo_ms)
        best = sorted(ok, key=lambda t: -t.throughput)[:keep]
        for c in grid:
            if len(trials) >= max_sims:
                break
            if c not in trials and any((c.token_budget, c.chunk_size) ==
                                       (t.candidate.token_budget, t.candidate.chunk_size) for t in best):
                trials[c] = Trial(c, evaluate(c))
    done = list(trials.values())
    ok = _feasible(done, tbt_slo_ms, ttft_slo_ms)
    if not ok:
        best_tbt = min(done, key=lambda t: t.p99(TBT))
        ttft = f" and --ttft-slo-ms={ttft_slo_ms}" if ttft_slo_ms is not None else ""
        raise TuneError(f"no candidate meets --tbt-slo-ms={tbt_slo_ms}{ttft}: the lowest simulated p99 TBT is "
                        f"{best_tbt.p99(TBT):.3g} ms (p99 TTFT {best_tbt.p99(TTFT):.3g} ms, {best_tbt.candidate}); "
                        f"raise --tbt-slo-ms to at least that, or lighten the workload")
    winner = max(ok, key=lambda t: (t.throughput, -t.p99(TBT)))
    base = trials[default]
    if base in ok and winner.throughput < base.throughput * (1 + min_gain):
        winner = base
    return TuneResult(done, pareto(done), winner, base)


def pareto(trials: list[Trial]) -> list[Trial]:
    """Trials that no other beats on both throughput (higher) and p99 TBT (lower), by throughput."""
    most = max((t.metrics.get("completed", 0) for t in trials), default=0)
    full = [t for t in trials if t.metrics.get("completed", 0) >= most]
    front = [t for t in full if not any(o.throughput >= t.throughput and o.p99(TBT) <= t.p99(TBT) and
                                        (o.throughput > t.throughput or o.p99(TBT) < t.p99(TBT)) for o in full)]
    return sorted(front, key=lambda t: t.throughput)


def _feasible(trials: list[Trial], tbt_slo_ms: float, ttft_slo_ms: float | None) -> list[Trial]:
    most = max((t.metrics.get("completed", 0) for t in trials), default=0)
    return [t for t in trials if t.metrics.get("completed", 0) >= most and t.p99(TBT) <= tbt_slo_ms
            and (ttft_slo_ms is None or t.p99(TTFT) <= ttft_slo_ms)]


def frontier_table(result: TuneResult) -> str:
    """The Pareto frontier as a text table, the winner (*) and the default (d) marked and added if off it."""
    lines = [f"{'':2}{'tok/s':>10} {'p99 TBT ms':>11} {'p99 TTFT ms':>12}  config"]
    shown = list(result.frontier)
    for t in (result.winner, result.default):
        if not any(t is u for u in shown):
            shown.append(t)
    for t in shown:
        mark = ("*" if t is result.winner else "") + ("d" if t is result.default else "")
        lines.append(_row(mark or " ", t))
    return "\n".join(lines + ["(* winner, d default)"])


def _row(mark: str, t: Trial) -> str:
    return f"{mark:2}{t.throughput:>10.1f} {t.p99(TBT):>11.2f} {t.p99(TTFT):>12.1f}  {t.candidate}"
