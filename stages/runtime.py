"""One rank's part of a job once the ranks have met: build the stage, run it, gather traces, write results."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from pp_runtime.job import RankJob
from pp_runtime.planner import needs_cost_model
from pp_runtime.planner.budget import budget_bound
from pp_runtime.rundir.run_state import begin_attempt
from pp_runtime.trace.tracer import Tracer
from stages.cuda_graphs import MAX_GRAPH_TOKENS, graphs_wanted
from stages.executor import StageExecutor
from stages.faults import Faults
from stages.kv_cache import KVCache
from stages.preemption import Preempted, announced
from stages.stage_model import build_stage_model
from stages.transport import Transport
from stages.vocab_parallel import HeadSplit

log = logging.getLogger("pp_runtime")


def run_stage(job: RankJob, *, stop=None) -> dict | None:
    """Build this rank's stage and run it; rank 0 also plans, writes outputs.jsonl, metrics.json and reports.

    ``stop`` (a ``StopSignal``) ends the job early: rank 0 drains and tells the others; then every rank, once
    the reports are written, raises ``Preempted``.
    """
    cfg, rank, world = job.cfg, job.rank, job.world_size
    if rank == 0:
        # First, before this attempt writes anything (cost_model.json): a torn last line of outputs.jsonl goes, or
        # with runtime.resume=false the earlier run's files move into old-<time>/.
        begin_attempt(cfg.output_dir, job.resume)
    layers = job.layer_ranges[rank]
    tracer = Tracer(rank, capacity=cfg.tracer.capacity, enabled=cfg.tracer.enabled, device=job.device)
    head_split = None
    if cfg.pipeline.split_lm_head is True and world == 1:
        log.info("pipeline.split_lm_head=true: one stage holds the whole LM head, there is nothing to split")
    if job.head_split is not None and world > 1:
        head_split = HeadSplit(job.head_split, job.hf_config.vocab_size, job.hf_config.hidden_size, job.dtype)
    model = build_stage_model(job.model_dir, job.hf_config, layers, num_stages=world, stage=rank,
                              device=job.device, dtype=job.dtype, head_split=job.head_split)
    backend = job.attention_backend
    graphs = graphs_wanted(cfg.runtime.cuda_graphs, job.device, backend)
    cache = KVCache(list(layers), num_blocks=job.num_blocks, block_size=cfg.cache.block_size,
                    hf_config=job.hf_config, dtype=job.dtype, device=job.device, extra_blocks=int(graphs))
    executor = StageExecutor(model, cache, device=job.device, backend=backend, cuda_graphs=graphs,
                             max_blocks_per_seq=-(-job.max_model_len // cfg.cache.block_size),
                             graph_max_tokens=min(budget_bound(cfg.scheduler), MAX_GRAPH_TOKENS),
                             head_split=head_split)
    log.info("stage %d: layers %d-%d%s%s, %d KV blocks of %d tokens, %s attention%s, %s %s", rank, layers.start,
             layers.stop - 1, " + embeddings" if model.is_first else "", _head_note(model, head_split),
             job.num_blocks, cfg.cache.block_size, backend, ", CUDA graphs" if graphs else "", job.device,
             str(job.dtype).removeprefix("torch."))
    transport = None
    clock_error_ns = 0
    if world > 1:
        # With NCCL carrying activations, headers, clock sync and gathers need a gloo group of their own; with
        # gloo the default group serves both (CUDA activations then go through pinned host memory).
        cpu_group = dist.new_group(backend="gloo") if job.transport == "nccl" else None
        # Plans, the stop message and sampled tokens go over a gloo group of their own (a thread on each stage
        # waits for plans on it): small messages never wait behind an activation on the same connection.
        control_group = dist.new_group(backend="gloo")
        transport = Transport(rank, world, device=job.device, hidden_size=job.hf_config.hidden_size,
                              dtype=job.dtype, timeout_s=cfg.runtime.timeout_s, tracer=tracer, cpu_group=cpu_group,
                              control_group=control_group,
                              host_staging=job.transport == "gloo" and job.device.type == "cuda",
                              max_rows=_max_rows(job), head_split=head_split)
        if cfg.tracer.enabled:
            from stages.clock_sync import estimate_clock_offset

            offset, clock_error_ns = estimate_clock_offset(rank, rounds=cfg.tracer.clock_sync_rounds, group=cpu_group)
            tracer.set_clock_offset(offset, clock_error_ns)
    if job.cost_model is not None:
        cost_model = job.cost_model
        if rank == 0:
            log.info("cost model from scheduler.cost_model_path=%s (not profiled): %s", cfg.scheduler.cost_model_path,
                     cost_model)
    else:
        cost_model = _cost_model(job, executor, transport)
    faults = Faults(cfg.debug)
    if rank == 0:
        from stages.rank0 import serve_requests

        result = serve_requests(job, executor, transport, tracer, faults, cost_model=cost_model, stop=stop)
        stopped = result["stopped"]
    else:
        from stages.worker import serve

        if stop is not None:
            stop.pass_on()  # a signal that came before the ranks met
        serve(rank, executor, transport, tracer, faults)
        result = None
        stopped = announced()  # rank 0 said so before the stop message came round
    events = {rank: tracer.events()}
    errors = {rank: clock_error_ns}
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((events[rank], clock_error_ns), gathered, dst=0, group=transport.cpu_group)
        if rank == 0:
            events = {r: g[0] for r, g in enumerate(gathered)}
            errors = {r: g[1] for r, g in enumerate(gathered)}
    if rank == 0:
        from stages.rank0 import finish_reports

        finish_reports(job, result, events, errors)
    if stopped:
        raise Preempted(stopped)
    return result


def _head_note(model, split: HeadSplit | None) -> str:
    if model.head is None:
        return ""
    if split is None:
        return " + LM head"
    start = model.vocab_start
    return f" + LM head tokens {start}-{start + model.head.out_features - 1} (pipeline.split_lm_head)"


def _max_rows(job: RankJob) -> int:
    """The most tokens a micro-batch can carry, for activation receives posted before their plan is there: a
    budget's worth beside a whole prompt that runs over it (orca, static). On the CPU only; with host staging a
    pinned buffer that large could be a GiB, so CUDA stages post receives for plans that have arrived."""
    if job.device.type != "cpu":
        return 0
    return budget_bound(job.cfg.scheduler) + job.max_model_len


def _cost_model(job: RankJob, executor: StageExecutor, transport: Transport | None):
    """Rank 0's cost model: the one loaded from scheduler.cost_model_path, or profiled now on every stage."""
    from pp_runtime.planner.cost_model import CostModel, stage_layout

    cfg, rank, world = job.cfg, job.rank, job.world_size
    if not needs_cost_model(cfg.scheduler):
        return None
    from pp_runtime.model import cost_cache
    from stages.profiler import describe_profile, profile_shapes, profile_stage, stage_code_digest

    budget = budget_bound(cfg.scheduler)  # auto: its maximum, so the profile covers every budget it may choose
    # Time the contexts this job can reach, not more: decode attention over long contexts is memory-bound on a
    # CPU and would dominate a fit meant for the job's own shapes.
    longest = max((len(r.prompt_token_ids) + r.params.max_tokens for r in job.requests), default=budget)
    max_context_len = min(job.max_model_len, longest)
    key = cost_cache.cost_model_key(
        model_dir=job.model_dir, layers_per_stage=[len(r) for r in job.layer_ranges],
        device=cost_cache.device_name(job.device), dtype=str(job.dtype).removeprefix("torch."),
        backend=job.attention_backend, threads=cfg.runtime.threads, token_budget=budget,
        max_context_len=max_context_len, stage_code=stage_code_digest(),
        head_split=job.head_split if world > 1 else None)
    layout = stage_layout([len(r) for r in job.layer_ranges], job.head_split if world > 1 else None)
    # Rank 0 decides (other nodes may hold other caches) and tells the others whether to profile.
    cached = cost_cache.load_cached(key) if rank == 0 and cfg.runtime.cost_model_cache else None
    hit = [cached is not None]
    if world > 1:
        dist.broadcast_object_list(hit, src=0, group=transport.cpu_group)
    if hit[0]:
        if rank == 0:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            cached.to_json(Path(cfg.output_dir) / "cost_model.json", layout=layout)
            log.info("cost model from the cache (%s; runtime.cost_model_cache=false profiles again): %s",
                     cost_cache.cache_dir(), cached)
        return cached
    if rank == 0:
        shapes = profile_shapes(budget, max_context_len=max_context_len,
                                cache_tokens=job.num_blocks * cfg.cache.block_size)
        skip = (f"the next run of this job takes it from the cache ({cost_cache.cache_dir()})"
                if cfg.runtime.cost_model_cache else "runtime.cost_model_cache=false: profiled every run")
        log.info("profiling the cost model on every stage before serving: %s (the longest request, prompt + "
                 "max_tokens, at most model.max_model_len; the time grows with it); %s, or pass "
                 "scheduler.cost_model_path=%s/cost_model.json", describe_profile(shapes), skip, cfg.output_dir)
    rows = profile_stage(rank, executor, token_budget=budget, max_context_len=max_context_len,
                         hidden_size=job.hf_config.hidden_size, dtype=job.dtype)
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0, group=transport.cpu_group)
        rows = [r for part in gathered for r in part] if rank == 0 else rows
    if rank != 0:
        return None
    model = CostModel.fit(rows)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    model.to_json(Path(cfg.output_dir) / "cost_model.json", layout=layout)
    if cfg.runtime.cost_model_cache:
        cost_cache.store(key, model)
    log.info("cost model fitted from %d timings (reuse with scheduler.cost_model_path=%s/cost_model.json): %s",
             len(rows), cfg.output_dir, model)
    return model
