"""Pick the simulator's time model from ``cfg.sim.cost_model``: profiled, layer_profile or roofline.

A *time model* is any object with ``num_stages`` and ``predict(pieces) -> list[float]`` (seconds of a
micro-batch on each stage). ``CostModel`` is one; ``SplitTimeModel`` over a per-part source (a layer profile,
the roofline) is another, for any layer split. (The simulator fits a ``CostModel`` to any
time model for a planner that balances by predicted time: ``pp_runtime.sim.fit_cost_model``.)
"""

from __future__ import annotations

from pp_runtime.config import ConfigError
from pp_runtime.planner.cost_model import CostModel, CostModelError, check_layout
from pp_runtime.sim.parts import PartSource, SplitTimeModel


def part_source(cfg, *, hf_config) -> PartSource | None:
    """The per-part source of ``cfg.sim.cost_model`` (layer_profile or roofline); None for profiled."""
    kind = cfg.sim.cost_model
    if kind == "layer_profile":
        from pp_runtime.sim.layer_profile import LayerProfile, LayerProfileError

        path = cfg.sim.layer_profile_path
        if not path:
            raise ConfigError("sim.cost_model=layer_profile needs sim.layer_profile_path (a file written by "
                              "scripts/profile_layers.py)")
        try:
            profile = LayerProfile.from_json(path)
        except LayerProfileError as exc:
            raise ConfigError(f"sim.layer_profile_path={path!r}: {exc}") from None
        mismatch = profile.shape_mismatch(hf_config)
        if mismatch:
            job = f"sim.model_shape={cfg.sim.model_shape}" if cfg.sim.model_shape else \
                f"model.path={cfg.model.path or 'null (the default SmolLM2-135M-Instruct)'}"
            raise ConfigError(
                f"sim.layer_profile_path={path!r} times another model shape than the job's {job} ({mismatch}; "
                f"profile: {profile.meta.get('shape', 'unnamed')}); profile the job's model (python -m "
                f"scripts.profile_layers --model-dir DIR --out FILE), or under pp-tune leave sim.layer_profile_path "
                f"unset to profile it now")
        return profile
    if kind == "roofline":
        from pp_runtime.sim.hardware import GPUS, MODEL_SHAPES, ModelShape
        from pp_runtime.sim.roofline import RooflineParts

        if cfg.sim.gpu not in GPUS:
            raise ConfigError(f"sim.gpu={cfg.sim.gpu!r} has no roofline preset; use one of {', '.join(GPUS)}")
        name = cfg.sim.model_shape
        if name is not None and name not in MODEL_SHAPES:
            raise ConfigError(f"sim.model_shape={name!r} is not a preset; use one of {', '.join(MODEL_SHAPES)} "
                              f"or null for the job's model")
        shape = MODEL_SHAPES[name] if name is not None else ModelShape.from_hf(hf_config)
        return RooflineParts(shape, GPUS[cfg.sim.gpu], dtype_bytes=4 if cfg.dtype == "float32" else 2)
    return None


def build_time_model(cfg, *, hf_config, layer_ranges: list[range], run_cost_model=None,
                     head_split: int | None = None):
    """The time model ``cfg.sim.cost_model`` names, for the split ``layer_ranges`` (one range per stage) and the
    LM head's (``head_split``: v0 of a vocabulary-parallel head, whose first v0 tokens are stage 0's).

    profiled: ``sim.cost_model_path``, else ``run_cost_model``, else ``scheduler.cost_model_path``, else
    ``CostModel.default``; its stage count must be the split's. layer_profile / roofline: scaled to the split.
    Raises ConfigError naming the key to fix.
    """
    counts = [len(r) for r in layer_ranges]
    source = part_source(cfg, hf_config=hf_config)
    if source is not None:
        return SplitTimeModel(source, counts, (head_split or 0) / hf_config.vocab_size)
    key, path = "sim.cost_model_path", cfg.sim.cost_model_path
    if not path and run_cost_model is None:
        key, path = "scheduler.cost_model_path", cfg.scheduler.cost_model_path
    if path:
        try:
            model = CostModel.from_json(path)
        except CostModelError as exc:
            raise ConfigError(f"{key}={path!r}: {exc}") from None
    else:
        model = run_cost_model if run_cost_model is not None else CostModel.default(len(counts))
    if model.num_stages != len(counts):
        raise ConfigError(f"{key}={path!r} has coefficients for {model.num_stages} stage(s) but the simulated "
                          f"pipeline has {len(counts)}; set sim.cost_model_path to a cost_model.json of a "
                          f"{len(counts)}-stage run, or use sim.cost_model=layer_profile or roofline")
    if path:  # its stage times are the simulated stages' only on the layout they were timed on
        check_layout(path, key=key, layers_per_stage=counts, lm_head_split=head_split if len(counts) > 1 else None,
                     other="use sim.cost_model=layer_profile or roofline, which scale to any split")
    return model

