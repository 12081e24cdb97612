"""A job resolved from its config before any process exists, for the runtime and the simulator alike.

``resolve_job`` turns a ``Config`` plus the model's Hugging Face config into a typed ``Job``: the context limit,
the layer-count check, the requests, the layer split, the KV-cache size and the end-of-sequence ids. The runtime
(``launch/rank_job.py``) adds what one rank needs (``RankJob``: rank, device, transport, attention backend, cost
model, resume plan); the simulator (``pp_runtime/sim/sim_job.py``) adds its time model and links. Everything here
raises ``ConfigError`` / ``RequestError`` naming the key to change, so bad input fails before ranks meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pp_runtime.config import Config, ConfigError
from pp_runtime.model.cache_size import resolve_num_blocks
from pp_runtime.model.partition import (
    CPU_FIXED_ROWS,
    check_layout,
    head_cost_layers,
    head_cost_of_mix,
    partition_layers,
    planned_rows,
    resolve_head_split,
    sampled_share,
)
from pp_runtime.model.source import eos_token_ids
from pp_runtime.planner.budget import budget_bound
from pp_runtime.request import Request

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from pp_runtime.planner.cost_model import CostModel
    from pp_runtime.rundir.run_state import ResumePlan


@dataclass
class Job:
    """What every rank, and the simulator, agree on about a job before any process talks."""

    cfg: Config
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase | None  # None: a simulator shape preset (token-id workloads only)
    model_dir: str | None  # None: a simulator shape preset
    dtype: torch.dtype
    max_model_len: int  # tokens: prompt + output of one request at most
    layer_ranges: list[range]  # one contiguous range of decoder layers per stage
    num_blocks: int  # KV blocks per stage (every stage the same)
    requests: list[Request]
    eos_token_ids: list[int]
    device_memory_gib: float | None = None  # each stage's device memory (sizes the default cache); None: the CPU
    head_split: int | None = None  # v0 of a vocabulary-parallel LM head (pipeline.split_lm_head); None: not split

    @property
    def num_stages(self) -> int:
        return len(self.layer_ranges)


@dataclass
class RankJob(Job):
    """A ``Job`` as one rank of the runtime runs it (built by ``launch.rank_job.prepare``)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    transport: str = "gloo"  # how activations travel: "nccl", or "gloo" (through pinned host memory on CUDA)
    attention_backend: str = "sdpa"  # a name of stages.attention's backends
    cost_model: CostModel | None = None  # from scheduler.cost_model_path; None: profiled at start-up if needed
    resume: ResumePlan | None = None  # how this attempt continues the run directory


def context_limit(hf_config) -> int:
    """The longest sequence (tokens) the model's positions support."""
    return getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", 2048)


def resolve_job(cfg: Config, *, hf_config, tokenizer, model_dir: str | None, dtype: torch.dtype,
                device_memory_gib: float | None = None) -> Job:
    """Resolve ``cfg`` (validated, ``pipeline.stages`` set) against the model's config.

    ``device_memory_gib``: the memory of each stage's GPU, which sizes the default KV cache
    (``cache.gpu_memory_utilization``); None on the CPU. Raises ConfigError (context length, layer split, cache
    size, workload without a tokenizer) or RequestError (a bad request), naming the key or request to change.
    """
    limit = context_limit(hf_config)
    if cfg.model.max_model_len is not None and cfg.model.max_model_len > limit:
        raise ConfigError(f"model.max_model_len={cfg.model.max_model_len} is more than the model supports "
                          f"({limit} positions, max_position_embeddings); set it to at most {limit}, or null")
    max_model_len = cfg.model.max_model_len or limit
    check_layout(hf_config.num_hidden_layers, cfg.pipeline.stages, cfg.pipeline.layers_per_stage)
    if tokenizer is None and cfg.workload.kind == "default":
        source = f"model.path={model_dir!r}" if model_dir is not None else f"sim.model_shape={cfg.sim.model_shape!r}"
        raise ConfigError(f"workload=default needs the model's tokenizer, and {source} has none: use a token-id "
                          "workload (workload=synthetic, workload=trace, or jsonl with prompt_token_ids)")
    from pp_runtime.workloads import load_workload

    requests = load_workload(cfg.workload, tokenizer=tokenizer, max_model_len=max_model_len,
                             vocab_size=hf_config.vocab_size, model_limit=limit)
    cpu = device_memory_gib is None
    head_split = resolve_head_split(cfg.pipeline.split_lm_head, vocab_size=hf_config.vocab_size,
                                    num_stages=cfg.pipeline.stages, cpu=cpu)
    head_cost = _head_cost(cfg, hf_config, requests, max_model_len, cpu=cpu)
    ranges = partition_layers(hf_config.num_hidden_layers, cfg.pipeline.stages, head_cost=head_cost,
                              layers_per_stage=cfg.pipeline.layers_per_stage,
                              first_head_share=(head_split or 0) / hf_config.vocab_size)
    num_blocks = resolve_num_blocks(cfg.cache, hf_config=hf_config, layer_ranges=ranges,
                                    token_budget=budget_bound(cfg.scheduler), dtype=dtype,
                                    device_memory_gib=device_memory_gib, split_head=head_split is not None)
    return Job(cfg, hf_config, tokenizer, model_dir, dtype, max_model_len, ranges, num_blocks, requests,
               eos_token_ids(hf_config, model_dir), device_memory_gib, head_split)


def _head_cost(cfg: Config, hf_config, requests: list[Request], max_model_len: int, *, cpu: bool) -> float:
    """The LM head's weight in the split, in layer equivalents: priced over the micro-batches the planner makes of
    the workload, with a fixed part per micro-batch on the CPU; else by the workload's share of sampled tokens."""
    if cfg.pipeline.stages == 1 or cfg.pipeline.layers_per_stage is not None:
        return 0.0  # nothing to balance
    rows = planned_rows(cfg.scheduler, requests, num_slots=cfg.pipeline.depth, max_model_len=max_model_len,
                        block_size=cfg.cache.block_size)
    if not rows:
        return head_cost_layers(hf_config, sampled_share(requests))
    return head_cost_of_mix(hf_config, rows, fixed_rows=CPU_FIXED_ROWS if cpu else 0.0)
