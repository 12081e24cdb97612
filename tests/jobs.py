"""Run whole pipeline jobs in forked ranks (gloo, CPU) and read back what rank 0 wrote."""

from __future__ import annotations

import json
from pathlib import Path

from tests.multiproc import run_ranks, run_ranks_outcomes


def make_config(overrides: list[str]):
    """Compose the Hydra config exactly as ``launch.run`` does, with command-line style overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pp_runtime.config import register_configs

    register_configs()
    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        return OmegaConf.to_object(compose("config", overrides=overrides))


def _rank_main(rank: int, world_size: int, overrides: list[str]):
    from launch.rank_job import run_job

    result = run_job(make_config(overrides))
    return None if result is None else result["metrics"]


def run_job_ranks(stages: int, overrides: list[str], *, timeout: float = 300.0, start_method: str = "fork"):
    """Run a job on ``stages`` forked (or spawned) ranks; returns rank 0's metrics. Raises RanksFailed if any rank
    fails. One stage runs in this process."""
    overrides = [f"pipeline.stages={stages}", "runtime.progress=false", *overrides]
    if stages == 1:
        return _rank_main(0, 1, overrides)
    return run_ranks(_rank_main, stages, overrides, timeout=timeout, start_method=start_method)[0]


def run_job_outcomes(stages: int, overrides: list[str], *, timeout: float = 120.0):
    overrides = [f"pipeline.stages={stages}", "runtime.progress=false", *overrides]
    return run_ranks_outcomes(_rank_main, stages, overrides, timeout=timeout)


def read_outputs(out_dir: Path) -> dict[str, dict]:
    lines = (Path(out_dir) / "outputs.jsonl").read_text().splitlines()
    return {rec["id"]: rec for rec in map(json.loads, lines)}
