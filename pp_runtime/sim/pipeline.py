"""The discrete-event pipeline simulation: the real planner, driven the way rank 0 drives it, on a virtual clock.

The loop is ``planner/loop.py``'s (the runtime's and the tests' too); this module is its clock. Rank 0 is one
thread that, exactly as ``stages/engine.py`` orders it, plans (``planner.schedule``, charged the
planner's time), computes stage 0 and sends while fewer than ``pipeline.depth`` micro-batches are in flight, else
waits for the oldest micro-batch's sampled tokens and folds them back; with nothing in flight and nothing
schedulable, its clock jumps to the next arrival. Every later stage is a server with a FIFO queue: it computes a
micro-batch once it has arrived and the stage is free. Each send costs the sender the link's send overhead, then
the hop adds the link's transfer time for the activations (``num_tokens x hidden x dtype bytes``), starting at
once (eager: pp-runtime's stages post their receives ahead) or once the receiver is free (rendezvous); the last
stage's tokens reach stage 0 after the return link's latency.

Micro-batches leave rank 0 in order and every stage serves them in order, so a micro-batch's whole trip down
the pipeline is fixed the moment it is launched: the simulation computes it then, with no event heap. The clock
is integer nanoseconds, so constant times add up exactly. Events come out as ``Tracer.events()`` rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pp_runtime.config import Config, ConfigError
from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner import CostModel, make_planner, needs_cost_model, profile_points
from pp_runtime.planner.budget import budget_bound, resolve_token_budget
from pp_runtime.planner.cost_model import work
from pp_runtime.planner.loop import VirtualClock, run
from pp_runtime.request import Request
from pp_runtime.rundir.metrics import compute_metrics
from pp_runtime.sequence import Sequence
from pp_runtime.sim.links import LinkModel
from pp_runtime.trace.tracer import EventKind

_NS = 1_000_000_000


@dataclass
class SimResult:
    """A simulated run: ``metrics`` as ``compute_metrics`` gives them (plus policy, stages, simulated=True),
    ``events`` per stage as ``Tracer.events()`` rows, the planner's ``seqs``, ``micro_batches`` in launch
    order, and ``alone`` (what ``metrics``' slowdown divides by)."""

    metrics: dict
    events: dict[int, np.ndarray]
    seqs: list[Sequence]
    micro_batches: list[MicroBatch] = field(default_factory=list)
    # seq -> (TTFT, e2e) seconds alone, the yardstick of metrics' slowdown (outputs.jsonl records it per request)
    alone: Callable[[Sequence], tuple[float, float]] | None = None
    # The chunks of one prompt the planner let in flight (scheduler.max_chunks_in_flight resolved); None: the policy
    # ignores the key
    max_chunks_in_flight: int | None = None


def simulate(cfg: Config, requests: list[Request], *, time_model, links: LinkModel | None = None, hidden_size: int,
             dtype_bytes: int, sample: Callable[[Piece], int] | None = None, planner_time_s: float | None = None,
             eos_token_ids=(), max_model_len: int, num_blocks: int, planner_cost_model=None,
             cache_keys: str = "cache.memory_gib or cache.num_blocks") -> SimResult:
    """Simulate ``requests`` served by ``cfg``'s planner (policy, budget, chunk, depth) on ``cfg.pipeline.stages``.

    ``time_model``: any object with ``num_stages`` and ``predict(pieces) -> list[float]`` (seconds per stage).
    ``links``: per-hop transfer times; None: free links. ``hidden_size`` and ``dtype_bytes`` size the activations.
    ``sample(piece)``: the token sampled from a piece; None: a fixed id that stops nothing (runs go to max_tokens).
    ``planner_time_s``: seconds charged per ``schedule`` call; None: from ``cfg.sim`` (charge_planner and
    planner_time_us; a null planner_time_us measures each call). ``planner_cost_model``: the CostModel the
    planner balances with when its policy needs one; None: ``time_model`` itself if it is a CostModel, else one
    fitted to ``time_model`` over ``profile_points``, as the runtime fits its stages. ``cache_keys``: the keys
    that size the KV cache on the simulated device, named when a request can never fit it.
    """
    n = cfg.pipeline.stages
    if n is None or time_model.num_stages != n:
        raise ConfigError(f"pipeline.stages={n} but the time model has {time_model.num_stages} stage(s); set "
                          f"pipeline.stages={time_model.num_stages} or give a cost model for {n} stages")
    links = links or LinkModel.uniform(n)
    if needs_cost_model(cfg.scheduler) and planner_cost_model is None:
        planner_cost_model = fit_cost_model(time_model, token_budget=budget_bound(cfg.scheduler),
                                            max_context_len=max_model_len)
    # token_budget=auto: the knee of the planner's cost model, as rank 0 chooses it in a real run.
    scheduler, budget_choice = resolve_token_budget(cfg.scheduler, planner_cost_model)
    planner = make_planner(scheduler, num_blocks=num_blocks, block_size=cfg.cache.block_size,
                           num_slots=cfg.pipeline.depth, max_model_len=max_model_len, eos_token_ids=eos_token_ids,
                           cost_model=planner_cost_model, cache_keys=cache_keys)
    for req in requests:
        planner.add_request(req)
    if sample is None:
        sample = _fixed_token(requests, eos_token_ids)
    if planner_time_s is None and cfg.sim.charge_planner and cfg.sim.planner_time_us is not None:
        planner_time_s = cfg.sim.planner_time_us * 1e-6
    clock = _PipelineClock(time_model, links, sample, row_bytes=hidden_size * dtype_bytes,
                           plan_ns=None if planner_time_s is None and cfg.sim.charge_planner
                           else round((planner_time_s or 0.0) * _NS))
    launched: list[MicroBatch] = []
    run(planner, clock, on_schedule=launched.append, max_micro_batches=1_000_000)
    events = {s: _as_events(r) for s, r in enumerate(clock.rows)}
    # Slowdowns are measured against the simulated hardware's own time model, so a request simulated alone has
    # slowdown ~1 (the planner's cost model, fitted to it, was 20% off on a 32k prompt); a replay of measured times
    # has no model to spare: the planner's cost model.
    alone = time_model
    if getattr(time_model, "stateful", False):
        alone = planner.cost_model or fit_cost_model(time_model, token_budget=scheduler.token_budget,
                                                     max_context_len=max_model_len)
    def alone_times(seq: Sequence) -> tuple[float, float]:
        return planner.alone_times(seq, alone)

    metrics = compute_metrics(planner.seqs, wall_s=clock.seconds(), alone=alone_times)
    metrics.update(policy=cfg.scheduler.policy, stages=n, simulated=True, token_budget=budget_choice)
    if planner.cost_model is not None:  # the planner's model against the simulated hardware
        from pp_runtime.planner.cost_model import prediction_error

        metrics["cost_model_error"] = prediction_error(planner.cost_model, planner.mb_work, events)
    return SimResult(metrics, events, planner.seqs, launched, alone=alone_times,
                     max_chunks_in_flight=getattr(planner, "max_chunks_in_flight", None))


class _PipelineClock(VirtualClock):
    """Rank 0's clock in integer ns over N stage servers: the ``Clock`` that ``planner.loop.run`` runs the
    planner on. Records every stage's PLAN, COMPUTE, SEND and WAIT rows as a real run's tracer would."""

    def __init__(self, time_model, links: LinkModel, sample: Callable[[Piece], int], *, row_bytes: int,
                 plan_ns: int | None):
        self.time_model, self.plan_ns = time_model, plan_ns  # plan_ns None: measure each schedule call
        self.sample = sample
        n = time_model.num_stages
        self.n = n
        self.hops = [_Hop(link, row_bytes) for link in (*links.hops, links.back)]  # hops[n-1]: tokens back, 0 bytes
        self.send_ns = [round(link.send_s * _NS) for link in (*links.hops, links.back)]  # the sender's own time
        self.rows: list[list[tuple]] = [[] for _ in range(n)]
        self.free = [0] * n  # when each stage s > 0 is done with its last micro-batch
        self.now = 0  # rank 0's clock

    def seconds(self) -> float:
        return self.now / _NS

    def schedule(self, planner):
        t0 = self.now
        if self.plan_ns is None:
            c0 = time.perf_counter_ns()
            mb = planner.schedule(t0 / _NS)
            self.now += time.perf_counter_ns() - c0
        else:
            mb = planner.schedule(t0 / _NS)
            self.now += self.plan_ns
        self.rows[0].append((EventKind.PLAN, t0, self.now, -1 if mb is None else mb.id, 0, 0))
        return mb

    def launch(self, mb: MicroBatch) -> int | None:
        """Stage 0 computes and sends on rank 0's thread; the micro-batch's whole trip is fixed here, because
        every stage serves micro-batches in launch order."""
        times = [round(x * _NS) for x in self.time_model.predict(mb.pieces)]
        p, d, rows, now = mb.num_prefill_tokens, mb.num_decode_tokens, self.rows, self.now
        rows[0].append((EventKind.COMPUTE, now, now + times[0], mb.id, p, d))
        now += times[0]
        if self.n == 1:
            self.now = now
            return None
        rows[0].append((EventKind.SEND, now, now + self.send_ns[0], mb.id, 0, 0))
        self.now = sent = now + self.send_ns[0]
        for s in range(1, self.n):
            free = self.free[s]
            start = max(free, self.hops[s - 1].arrival(sent, free, mb.num_tokens))
            end = start + times[s]
            rows[s] += [(EventKind.WAIT, free, start, mb.id, 0, 0), (EventKind.COMPUTE, start, end, mb.id, p, d),
                        (EventKind.SEND, end, end + self.send_ns[s], mb.id, 0, 0)]
            self.free[s] = sent = end + self.send_ns[s]
        return sent  # when the last stage has sent the tokens back; receive() adds the return hop

    def receive(self, mb: MicroBatch, sent: int | None) -> None:
        if sent is None:  # one stage: its tokens came with its compute
            return
        back = max(self.now, self.hops[-1].arrival(sent, self.now, 0))
        self.rows[0].append((EventKind.WAIT, self.now, back, mb.id, 0, 0))
        self.now = back

    def wait_for_arrival(self, arrival_s: float) -> None:
        self.now = max(self.now, math.ceil(arrival_s * _NS))
        while self.now / _NS < arrival_s:  # the planner compares seconds: land on or after the arrival
            self.now += 1


class _Hop:
    """When a micro-batch of ``num_tokens`` activation rows sent at ``sent`` reaches a receiver free from ``free``,
    in integer ns: eager hops start at once, rendezvous hops once the receiver is free too."""

    def __init__(self, link, row_bytes: int):
        self.link, self.row_bytes, self.rendezvous = link, row_bytes, link.rendezvous

    def arrival(self, sent: int, free: int, num_tokens: int) -> int:
        start = max(sent, free) if self.rendezvous else sent
        return start + round(self.link.transfer_s(num_tokens * self.row_bytes) * _NS)


def _as_events(rows: list[tuple]) -> np.ndarray:
    ev = np.array(rows, dtype=np.int64).reshape(-1, 6)  # [n, 6]: kind, start_ns, end_ns, mb_id, prefill, decode
    return ev[np.argsort(ev[:, 1], kind="stable")]


def _fixed_token(requests: list[Request], eos_token_ids) -> Callable[[Piece], int]:
    """A sampler returning one token id that is neither EOS nor any request's stop token."""
    banned = set(eos_token_ids).union(*(r.params.stop_token_ids for r in requests))
    token = next(i for i in range(len(banned) + 1) if i not in banned)
    return lambda piece: token


def fit_cost_model(time_model, *, token_budget: int, max_context_len: int) -> CostModel:
    """A CostModel fitted to ``time_model``'s predictions on the shapes the runtime profiles at start-up, so a
    planner that balances by predicted time sees the simulated hardware as the runtime would have measured it.
    A ``time_model`` that is a CostModel already is returned as it is."""
    if isinstance(time_model, CostModel):
        return time_model
    rows = []
    for shape in profile_points(token_budget, max_context_len=max_context_len):
        # (num_tokens, context_len) pieces: every time model prices them as sampled pieces, as the profiler runs them.
        rows += [(s, *work(shape), secs) for s, secs in enumerate(time_model.predict(shape))]
    return CostModel.fit(rows)
