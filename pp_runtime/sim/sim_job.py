"""A job as the simulator sees it: the shared ``Job`` (``pp_runtime/job.py``, the same resolver as a real job)
plus the time model and the links, resolved without building a model or a process group.
"""

from __future__ import annotations

from dataclasses import dataclass

from pp_runtime.config import Config, ConfigError
from pp_runtime.job import Job, resolve_job
from pp_runtime.model.cache_size import cache_size_keys
from pp_runtime.planner.cost_model import CostModel
from pp_runtime.sim.hardware import gpu
from pp_runtime.sim.links import LinkModel
from pp_runtime.sim.pipeline import SimResult, simulate
from pp_runtime.sim.time_model import build_time_model


@dataclass
class SimJob(Job):
    """A ``Job`` with what simulating it takes; ``run`` simulates it."""

    time_model: object = None  # one of pp_runtime.sim.time_model's models
    links: LinkModel | None = None
    planner_cost_model: CostModel | None = None  # a real run's cost model (replay), else the time model's

    @property
    def dtype_bytes(self) -> int:
        return self.dtype.itemsize

    def run(self, *, sample=None) -> SimResult:
        return simulate(self.cfg, self.requests, time_model=self.time_model, links=self.links,
                        hidden_size=self.hf_config.hidden_size, dtype_bytes=self.dtype_bytes, sample=sample,
                        eos_token_ids=self.eos_token_ids, max_model_len=self.max_model_len,
                        num_blocks=self.num_blocks, planner_cost_model=self.planner_cost_model,
                        cache_keys=cache_size_keys(self.cfg.cache, self.device_memory_gib))

    def info(self) -> dict:
        """What metrics.json records under "sim": the time model, the layer split and the links."""
        return {"time_model": repr(self.time_model), "layers_per_stage": [len(r) for r in self.layer_ranges],
                "links": self.links.describe(), "num_blocks": self.num_blocks}


def resolve_sim_job(cfg: Config, *, run_cost_model=None) -> SimJob:
    """Resolve ``cfg`` for simulation; ``run_cost_model`` is a real run's CostModel (replay). Raises ConfigError,
    RequestError or FileNotFoundError naming what to change."""
    import torch

    if cfg.pipeline.stages is None:
        raise ConfigError("pipeline.stages is not set; pp-sim has no torchrun world size to take it from: "
                          "set pipeline.stages=N")
    cfg.validate()
    hf_config, tokenizer, folder = _model(cfg)
    cpu = simulates_cpu(cfg)
    dtype = getattr(torch, cfg.dtype if cfg.dtype != "auto" else ("float32" if cpu else "bfloat16"))
    # A simulated GPU sizes the default cache from its preset's memory, as the runtime does from the real one's.
    memory_gib = None if cpu else gpu(cfg.sim.gpu).memory_gib
    job = resolve_job(cfg, hf_config=hf_config, tokenizer=tokenizer, model_dir=folder, dtype=dtype,
                      device_memory_gib=memory_gib)
    time_model = build_time_model(cfg, hf_config=hf_config, layer_ranges=job.layer_ranges,
                                  run_cost_model=run_cost_model, head_split=job.head_split)
    links = LinkModel.from_config(cfg.sim, cfg.pipeline.stages, cpu=cpu)
    return SimJob(**vars(job), time_model=time_model, links=links, planner_cost_model=run_cost_model)


def simulates_cpu(cfg: Config) -> bool:
    """Whether ``cfg`` simulates CPU stages rather than a GPU preset: ``device=cpu``, or ``auto`` with a profiled cost
    model or a layer profile taken on the CPU. The default cache size and ``auto`` settings
    (``pipeline.split_lm_head``) follow."""
    if cfg.device != "auto":
        return cfg.device == "cpu"
    if cfg.sim.cost_model == "profiled":
        return True
    if cfg.sim.cost_model == "layer_profile" and cfg.sim.layer_profile_path:
        from pp_runtime.sim.layer_profile import LayerProfile

        try:
            return LayerProfile.from_json(cfg.sim.layer_profile_path).meta.get("device") == "cpu"
        except (OSError, ValueError):  # a missing or bad file is reported where the time model reads it
            return False
    return False


def _model(cfg: Config):
    """The Hugging Face config, tokenizer (None if the folder has none) and folder (None for a shape preset) of the
    job's model or shape preset."""
    from transformers import AutoConfig

    if cfg.sim.model_shape is not None:
        from pp_runtime.sim.hardware import MODEL_SHAPES

        if cfg.sim.model_shape not in MODEL_SHAPES:
            raise ConfigError(f"sim.model_shape={cfg.sim.model_shape!r} is not a preset; use one of "
                              f"{', '.join(MODEL_SHAPES)}, or null for the job's model")
        # A shape has no tokenizer: only token-id workloads can run on it.
        return MODEL_SHAPES[cfg.sim.model_shape].to_hf_config(), None, None
    from pp_runtime.model.source import load_tokenizer, model_dir

    folder = model_dir(cfg.model.path)
    return AutoConfig.from_pretrained(folder), load_tokenizer(folder), folder
