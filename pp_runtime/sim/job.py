"""Everything a simulation of a job's config needs, resolved as ``launch/job.py``'s ``prepare`` resolves a real job
(model config and tokenizer, workload, layer split, cache size) but without building a model or a process group.
"""

from __future__ import annotations

from dataclasses import dataclass

from pp_runtime.config import Config, ConfigError
from pp_runtime.request import Request
from pp_runtime.sim.links import LinkModel
from pp_runtime.sim.pipeline import SimResult, simulate
from pp_runtime.sim.time_model import build_time_model


@dataclass
class SimJob:
    """A job as the simulator sees it; ``run`` simulates it."""

    cfg: Config
    hf_config: object
    tokenizer: object
    max_model_len: int
    layer_ranges: list[range]
    num_blocks: int
    requests: list[Request]
    time_model: object
    links: LinkModel
    dtype_bytes: int
    eos_token_ids: list[int]
    planner_cost_model: object = None

    def run(self, *, sample=None) -> SimResult:
        return simulate(self.cfg, self.requests, time_model=self.time_model, links=self.links,
                        hidden_size=self.hf_config.hidden_size, dtype_bytes=self.dtype_bytes, sample=sample,
                        eos_token_ids=self.eos_token_ids, max_model_len=self.max_model_len,
                        num_blocks=self.num_blocks, planner_cost_model=self.planner_cost_model)

    def info(self) -> dict:
        """What metrics.json records under "sim": the time model, the layer split and the links."""
        return {"time_model": repr(self.time_model), "layers_per_stage": [len(r) for r in self.layer_ranges],
                "links": self.links.describe(), "num_blocks": self.num_blocks}


def prepare_sim(cfg: Config, *, run_cost_model=None) -> SimJob:
    """Resolve ``cfg`` for simulation; ``run_cost_model`` is a real run's CostModel (replay). Raises ConfigError,
    RequestError or FileNotFoundError naming what to change."""
    import torch

    from pp_runtime.model.cache_size import num_blocks_for_budget
    from pp_runtime.model.partition import check_layout, head_cost_layers, partition_layers, sampled_share
    from pp_runtime.model.source import eos_token_ids, model_dir
    from pp_runtime.workloads import load_workload

    if cfg.pipeline.stages is None:
        raise ConfigError("pipeline.stages is not set; pp-sim has no torchrun world size to take it from: "
                          "set pipeline.stages=N")
    cfg.validate()
    hf_config, tokenizer = _model(cfg)
    limit = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", 2048)
    max_model_len = min(cfg.model.max_model_len or limit, limit)
    check_layout(hf_config.num_hidden_layers, cfg.pipeline.stages, cfg.pipeline.layers_per_stage)
    if tokenizer is None and cfg.workload.kind == "default":
        raise ConfigError(f"workload=default needs the model's tokenizer, and sim.model_shape={cfg.sim.model_shape!r} "
                          "has none: use a token-id workload (workload=synthetic, workload=trace, or jsonl with "
                          "prompt_token_ids)")
    requests = load_workload(cfg.workload, tokenizer=tokenizer, max_model_len=max_model_len,
                             vocab_size=hf_config.vocab_size)
    ranges = partition_layers(hf_config.num_hidden_layers, cfg.pipeline.stages,
                              head_cost=head_cost_layers(hf_config, sampled_share(requests)),
                              layers_per_stage=cfg.pipeline.layers_per_stage)
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and cfg.sim.cost_model == "profiled")
    name = cfg.dtype if cfg.dtype != "auto" else ("float32" if cpu else "bfloat16")
    dtype = getattr(torch, name)
    num_blocks = cfg.cache.num_blocks or num_blocks_for_budget(
        cfg.cache.memory_gib, max_layers_per_stage=max(len(r) for r in ranges), block_size=cfg.cache.block_size,
        hf_config=hf_config, dtype=dtype)
    eos_ids = eos_token_ids(hf_config, None if cfg.sim.model_shape is not None else model_dir(cfg.model.path))
    time_model = build_time_model(cfg, hf_config=hf_config, layer_ranges=ranges, run_cost_model=run_cost_model)
    links = LinkModel.from_config(cfg.sim, cfg.pipeline.stages, cpu=cpu)
    return SimJob(cfg, hf_config, tokenizer, max_model_len, ranges, num_blocks, requests, time_model, links,
                  torch.tensor([], dtype=dtype).element_size(), eos_ids, planner_cost_model=run_cost_model)


def _model(cfg: Config):
    """The Hugging Face config and tokenizer (None if the folder has none) of the job's model or shape preset."""
    from transformers import AutoConfig

    if cfg.sim.model_shape is not None:
        from pp_runtime.sim.hardware import MODEL_SHAPES

        if cfg.sim.model_shape not in MODEL_SHAPES:
            raise ConfigError(f"sim.model_shape={cfg.sim.model_shape!r} is not a preset; use one of "
                              f"{', '.join(MODEL_SHAPES)}, or null for the job's model")
        # A shape has no tokenizer: only token-id workloads can run on it.
        return MODEL_SHAPES[cfg.sim.model_shape].to_hf_config(), None
    from pp_runtime.model.source import load_tokenizer, model_dir

    folder = model_dir(cfg.model.path)
    return AutoConfig.from_pretrained(folder), load_tokenizer(folder)
