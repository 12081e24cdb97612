"""The batch job: ``torchrun --nproc_per_node=N -m launch.run [overrides]`` (a Hydra app on every rank).

Every rank composes the same config. They share one run directory: unless ``hydra.run.dir`` is given, it is
stamped with the start time of the torchrun agent that started them all. Only rank 0 writes outputs and
``.hydra/``; each rank logs to its own ``rank<N>.log``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pp_runtime.config import Config, ConfigError, register_configs
from pp_runtime.request import RequestError

log = logging.getLogger("pp_runtime")
register_configs()


def _agent_start_time() -> float:
    """When this process's parent (the torchrun agent) started: the same for every local rank of a job."""
    try:
        ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def rank_overrides(argv: list[str], env: dict) -> list[str]:
    """Hydra overrides that give all ranks one run directory, per-rank logs, and .hydra/ from rank 0 only."""
    extra = []
    rank = int(env.get("RANK", 0))
    under_torchrun = "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env
    if under_torchrun and not any(a.startswith("hydra.run.dir=") for a in argv):
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(_agent_start_time()))
        extra.append(f"hydra.run.dir=outputs/{stamp}")
    extra.append(f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/rank{rank}.log")
    if rank != 0:
        extra.append("hydra.output_subdir=null")
    return extra


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _app(dcfg: DictConfig) -> None:
    from launch.job import run_job

    cfg: Config = OmegaConf.to_object(dcfg)
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    rank = int(os.environ.get("RANK", 0))
    try:
        run_job(cfg)
    except (ConfigError, RequestError, FileNotFoundError) as exc:
        log.error("stage %d: %s", rank, exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        log.exception("stage %d failed", rank)
        text = str(exc)
        print(f"error: {text}" if text.startswith("stage ") else f"error on stage {rank}: {text}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    sys.argv += rank_overrides(sys.argv[1:], dict(os.environ))
    _app()


if __name__ == "__main__":
    main()
