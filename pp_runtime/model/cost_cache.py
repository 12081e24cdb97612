"""A cache of fitted cost models, so that a second run of the same job starts in seconds instead of profiling.

A job's cost model (``pp_runtime.planner.CostModel``, profiled on every stage at start-up) depends on the model,
the layer split, the device, the dtype, the attention backend, the intra-op threads and the shapes profiled
(token budget, longest context); the key is a hash of exactly those (and the torch version, the cost model's
``FORM_VERSION`` and a hash of the stage code that was timed), so any change profiles again. Files live in
``$PP_RUNTIME_COST_CACHE``, else ``$PP_RUNTIME_CACHE/cost_models``, else ``~/.cache/pp-runtime/cost_models``, one
``<key>.json`` each holding the key's fields and the coefficients.
``runtime.cost_model_cache=false`` turns the cache off for a job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("pp_runtime")


def cache_dir() -> Path:
    if os.environ.get("PP_RUNTIME_COST_CACHE"):
        return Path(os.environ["PP_RUNTIME_COST_CACHE"])
    return Path(os.environ.get("PP_RUNTIME_CACHE", Path.home() / ".cache" / "pp-runtime")) / "cost_models"


def cost_model_key(*, model_dir: str, layers_per_stage: list[int], device: str, dtype: str, backend: str,
                   threads: int, token_budget: int, max_context_len: int, stage_code: str | None = None,
                   head_split: int | None = None) -> dict:
    """What a profiled cost model depends on. ``model_dir``: a model folder (or a shape preset's name); ``device``:
    its kind and name (``cuda:NVIDIA H100``, ``cpu:<model>``); ``stage_code``: a hash of the code that was timed
    (``stages.profiler.stage_code_digest``; None where nothing real is timed); ``head_split``: v0 of a split LM
    head (None: whole on the last stage), which moves half of the head's time to stage 0."""
    import torch

    from pp_runtime.planner.cost_model import FORM_VERSION

    config = Path(model_dir) / "config.json"
    return {"model_dir": str(Path(model_dir).resolve()) if config.exists() else model_dir,
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None,
            "layers_per_stage": list(layers_per_stage), "device": device, "dtype": dtype, "backend": backend,
            "threads": threads, "token_budget": token_budget, "max_context_len": max_context_len,
            "torch": torch.__version__, "form": FORM_VERSION, "stage_code": stage_code, "head_split": head_split}


def device_name(device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<CPU model name>``: timings move with the hardware."""
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or platform.machine()
    return f"cpu:{model}"


def entry_path(key: dict) -> Path:
    """The cache file of ``key`` (a JSON-able dict)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / f"{digest}.json"


def load_cached(key: dict):
    """The cached CostModel for ``key``, or None (no entry, or an unreadable one: it is profiled again)."""
    from pp_runtime.planner.cost_model import CostModel, CostModelError

    path = entry_path(key)
    if not path.exists():
        return None
    try:
        if json.loads(path.read_text()).get("key") != key:
            return None
        return CostModel.from_json(path)  # reads the coefficients, ignores "key"
    except (OSError, ValueError, AttributeError, CostModelError) as exc:
        log.warning("ignoring the cached cost model %s (%s): profiling again", path, exc)
        return None


def store(key: dict, model) -> Path | None:
    """Write ``model`` (``CostModel.to_json``'s object plus ``key``) atomically; returns the path, or None if the
    cache is not writable (the job goes on)."""
    path = entry_path(key)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.to_json(tmp)
        tmp.write_text(json.dumps({**json.loads(tmp.read_text()), "key": key}, indent=1) + "\n")
        os.replace(tmp, path)
        return path
    except OSError as exc:
        log.warning("could not write the cost-model cache %s (%s)", path, exc)
        return None
