"""One pipeline job on one rank: everything that can fail on bad input first, then the ranks meet and run.

Order matters: the config, the model folder, the layer split, the cache size and every request are checked
on every rank before the process group exists, so bad input fails fast everywhere and no rank waits on
another that has already given up.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from pp_runtime.config import Config, ConfigError
from pp_runtime.job import RankJob, resolve_job
from stages import attention

log = logging.getLogger("pp_runtime")


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``device`` for the rank with ``LOCAL_RANK`` ``local_rank``: ``cuda:<local_rank % visible GPUs>`` or the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device before anything else touches CUDA.

    Streams, events, graph pools, NCCL communicators and Triton launches default to the current device; without
    this a rank on cuda:k (k >= 1) would run them on cuda:0 while its tensors sit on cuda:k."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def device_share_gib(total_gib: float, *, local_rank: int, local_world_size: int, gpu_count: int) -> float:
    """This rank's share of its GPU's ``total_gib``: ranks on one node take ``cuda:<local_rank % gpu_count>``, so
    when there are more ranks than GPUs several share one, and each may only size its KV cache from its share
    (``cache.gpu_memory_utilization`` is then of that share); otherwise the second rank on a GPU runs out of
    memory."""
    device = local_rank % gpu_count
    sharing = sum(1 for r in range(local_world_size) if r % gpu_count == device)
    return total_gib / max(sharing, 1)


def resolve_transport(name: str, *, device_type: str, local_world_size: int, gpu_count: int) -> str:
    """``pipeline.transport`` resolved to "nccl" or "gloo" for this node: ``local_world_size`` ranks on a node
    with ``gpu_count`` visible GPUs. NCCL refuses two ranks on one GPU, so auto picks it only when every rank has
    its own; an explicit nccl that cannot work is a ConfigError raised before the ranks meet. auto is decided per
    node from that node's counts: on nodes with different GPU counts, set pipeline.transport explicitly."""
    if device_type != "cuda":
        if name == "nccl":
            raise ConfigError(f"pipeline.transport=nccl needs CUDA devices but the job runs on the {device_type}; "
                              f"use pipeline.transport=gloo or auto (or device=cuda on a machine with GPUs)")
        return "gloo"
    shared = local_world_size > gpu_count
    if name == "nccl" and shared:
        raise ConfigError(f"pipeline.transport=nccl but {local_world_size} ranks share {gpu_count} GPU(s) on this "
                          f"node, and NCCL refuses two ranks on one GPU (\"Duplicate GPU detected\"); set "
                          f"pipeline.transport=gloo (activations then go through pinned host memory), or run one "
                          f"rank per GPU (torchrun --nproc_per_node={gpu_count} per node)")
    if name == "auto":
        return "gloo" if shared else "nccl"
    return name


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def resolve_rank_job(cfg: Config) -> RankJob:
    """Resolve and validate everything on this rank; raises ConfigError / RequestError / FileNotFoundError."""
    from transformers import AutoConfig

    from pp_runtime.model.source import load_tokenizer
    from pp_runtime.model.source import model_dir as resolve_model_dir
    from pp_runtime.rundir.run_state import plan_resume

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cfg.pipeline.stages is None:
        cfg.pipeline.stages = world
    if cfg.pipeline.stages != world:
        started = f"torchrun started {world} rank(s)" if "WORLD_SIZE" in os.environ else \
            "this process runs alone (pp-run or python without torchrun: one stage)"
        raise ConfigError(f"pipeline.stages={cfg.pipeline.stages} but {started}; run torchrun "
                          f"--nproc_per_node={cfg.pipeline.stages} -m launch.run ..., or set pipeline.stages={world}")
    cfg.validate()
    torch.set_num_threads(cfg.runtime.threads)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", rank)))
    use_device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    transport = resolve_transport(cfg.pipeline.transport, device_type=device.type,
                                  local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                                  gpu_count=torch.cuda.device_count() if device.type == "cuda" else 0)
    try:
        backend = attention.choose_backend(cfg.model.attention, device, cfg.cache.block_size, dtype=dtype)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model_dir = resolve_model_dir(cfg.model.path)
    memory_gib = None
    if device.type == "cuda":
        memory_gib = device_share_gib(torch.cuda.get_device_properties(device).total_memory / 2**30,
                                      local_rank=int(os.environ.get("LOCAL_RANK", rank)),
                                      local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                                      gpu_count=torch.cuda.device_count())
    job = resolve_job(cfg, hf_config=AutoConfig.from_pretrained(model_dir), tokenizer=load_tokenizer(model_dir),
                      model_dir=model_dir, dtype=dtype, device_memory_gib=memory_gib)
    # Every rank checks the run directory (same config? same requests?) so a refusal fails everywhere at once.
    resume = plan_resume(cfg, job.requests)
    return RankJob(**vars(job),
                   rank=rank, world_size=world, device=device, transport=transport, attention_backend=backend,
                   cost_model=_load_cost_model(cfg, job), resume=resume)


def _load_cost_model(cfg: Config, job):
    """The cost model of ``scheduler.cost_model_path``, if set: refused (ConfigError) if it has coefficients for
    another number of stages, or was timed on another layout (layers per stage, LM head split) than ``job``'s."""
    from pp_runtime.planner.cost_model import CostModel, CostModelError, check_layout

    path = cfg.scheduler.cost_model_path
    if not path:
        return None
    try:
        model = CostModel.from_json(path)
    except CostModelError as exc:
        raise ConfigError(f"scheduler.cost_model_path={path!r}: {exc}, or set scheduler.cost_model_path=null to "
                          f"profile the stages at start-up") from None
    if model.num_stages != cfg.pipeline.stages:
        raise ConfigError(f"scheduler.cost_model_path={path!r} has coefficients for {model.num_stages} stage(s) but "
                          f"the job has pipeline.stages={cfg.pipeline.stages}; profile this layout (unset the path)")
    check_layout(path, key="scheduler.cost_model_path", layers_per_stage=[len(r) for r in job.layer_ranges],
                 lm_head_split=job.head_split)
    return model


def run_job(cfg: Config) -> dict | None:
    """Run one job on this rank (torchrun or forked test ranks set RANK/WORLD_SIZE/MASTER_*).

    Returns rank 0's metrics (None on other ranks). Raises on failure; the error names the failing stage.
    Raises ``Preempted`` on every rank when a SIGTERM / SIGUSR1 stopped the job early (outputs are flushed).
    """
    from launch.cores import pinned
    from stages.preemption import StopSignal

    with StopSignal() as stop:  # from the start: a signal while loading still ends the job gracefully
        job = resolve_rank_job(cfg)
        # Before the process groups exist: their threads inherit this rank's cores.
        with pinned(cfg.runtime.pin_cores, device_type=job.device.type, threads=cfg.runtime.threads,
                    local_rank=int(os.environ.get("LOCAL_RANK", job.rank)),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", job.world_size))):
            return _run_rank(cfg, job, stop)


def _run_rank(cfg: Config, job: RankJob, stop) -> dict | None:
    from stages.preemption import Preempted

    if job.world_size > 1:
        # The default group carries the activations: NCCL binds it to this rank's GPU; gloo takes no device.
        kwargs = {"device_id": job.device} if job.transport == "nccl" else {}
        dist.init_process_group(job.transport, timeout=timedelta(seconds=cfg.runtime.timeout_s), **kwargs)
    try:
        from stages.runtime import run_stage

        return run_stage(job, stop=stop)
    except Preempted:
        raise
    except BaseException as exc:
        if job.world_size > 1:
            _blame(job.rank, exc)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _blame(rank: int, exc: BaseException) -> None:
    """Name the stage that failed first. If another stage already reported a failure, this rank's error (a
    reset connection, a timeout, wherever it surfaced) is its consequence: raise that instead. Otherwise this
    rank is the first to fail: record it in the job's store for the others."""
    from stages.transport import PipelineError, failure_message, report_failure

    cause = failure_message()
    if cause is None:
        report_failure(rank, exc)
    elif not isinstance(exc, PipelineError) and not cause.startswith(f"stage {rank} "):
        raise PipelineError(f"stage {rank}: aborting, {cause}") from exc


