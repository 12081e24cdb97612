"""Run pipeline jobs under torchrun from benchmark scripts and read back their metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pp_runtime.config import PATH_KEYS

ROOT = Path(__file__).resolve().parent.parent


def run_torchrun(nproc: int, overrides: list[str], out_dir: Path, *, timeout_s: float = 3600) -> dict:
    """One job: ``torchrun --nproc_per_node=nproc -m launch.run overrides``; returns its metrics.json.

    The job runs with this checkout as its working directory, so ``out_dir`` and the overrides' relative paths
    (``_PATH_KEYS``) are taken against the caller's working directory and passed on absolute.
    """
    out_dir = Path(out_dir).absolute()
    overrides = [_absolute_path(o) for o in overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "launch.run", f"pipeline.stages={nproc}", "runtime.progress=false", "runtime.resume=false", *overrides,
           f"hydra.run.dir={out_dir}"]
    # This checkout first, then whatever the caller's path had (the GPU image keeps its wheels there).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics["job_wall_s"] = time.monotonic() - start
    return metrics


# Override keys whose value is a path the job reads or writes (relative: against the caller's working directory).
_PATH_KEYS = ("hydra.run.dir", *PATH_KEYS)


def _absolute_path(override: str) -> str:
    """``key=value`` with a relative path value made absolute against the current working directory, for the keys
    of ``_PATH_KEYS`` (``model.path`` only when the folder exists here: else it may be a hub id)."""
    key, sep, value = override.partition("=")
    if not sep or key.lstrip("+~") not in _PATH_KEYS or not value or value == "null" or Path(value).is_absolute():
        return override
    if key.lstrip("+~") == "model.path" and not Path(value).exists():
        return override
    return f"{key}={Path(value).absolute()}"


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}"


def random_llama(path: Path, **shape) -> Path:
    """A random-weight float32 Llama of ``shape`` (LlamaConfig fields; SmolLM2's vocabulary size, tied
    embeddings and a 4096-token context unless given) saved at ``path`` once, seed 0: a CPU benchmark's model
    without a download. Returns ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(**{"vocab_size": 49152, "max_position_embeddings": 4096, "tie_word_embeddings": True,
                             **shape})
        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
    return path
