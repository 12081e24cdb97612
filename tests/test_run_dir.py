"""launch.run_dir: on bad input a process removes only what Hydra made for it, and only folders this launch made."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import launch.run_dir as run_dir_mod
from launch.run_dir import HydraFiles, discard_run_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIG = OmegaConf.create({"scheduler": {"chunk_size": 0}})


@pytest.fixture
def launch(tmp_path, monkeypatch):
    """A launch from ``tmp_path`` into ``tmp_path/outputs/d/t``, as Hydra leaves it: .hydra/ and a log."""
    started = time.time() - 1.0
    monkeypatch.setattr(run_dir_mod, "launch_time", lambda: started)
    run = tmp_path / "outputs" / "d" / "t"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(CONFIG))
    (run / "sim.log").write_text("")
    fd = os.open(run / "sim.log", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    hydra_cfg = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(run), cwd=str(tmp_path)), output_subdir=".hydra")
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    yield run, HydraFiles([run / "sim.log"], run / ".hydra", OmegaConf.to_yaml(CONFIG), [fd])
    os.close(fd)


def test_what_this_launch_made_goes_with_the_folders_it_created(launch, tmp_path):
    run, made = launch
    (run / "sim.log").write_text("scheduler.chunk_size=0 is invalid\n")  # this process's own line
    discard_run_dir(made)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_existed_before_the_launch_stays(launch, tmp_path, monkeypatch):
    run, made = launch
    monkeypatch.setattr(run_dir_mod, "launch_time", lambda: time.time() + 1.0)  # every folder is older
    discard_run_dir(made)
    assert run.is_dir() and list(run.iterdir()) == []  # Hydra's files went, the user's folders stay


def test_a_log_another_live_process_uses_keeps_the_directory(launch):
    """Another pp-sim launched into the same outputs/<date>/<time> in the same second, still running."""
    run, made = launch
    other = os.open(run / "sim.log", os.O_RDONLY)  # its own open file: a lock of its own
    fcntl.flock(other, fcntl.LOCK_SH)
    try:
        discard_run_dir(made)
    finally:
        os.close(other)
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "sim.log"]


def test_another_processes_hydra_config_stays(launch):
    run, made = launch
    (run / ".hydra" / "config.yaml").write_text("scheduler:\n  chunk_size: 64\n")  # written after this one's
    discard_run_dir(made)
    assert (run / ".hydra" / "config.yaml").read_text() == "scheduler:\n  chunk_size: 64\n"
    assert not (run / "sim.log").exists()


def test_a_users_empty_directory_and_its_parent_survive_pp_sims_bad_input(tmp_path):
    (tmp_path / "mine" / "deep").mkdir(parents=True)
    res = subprocess.run([sys.executable, "-m", "launch.sim", "pipeline.stages=1", "scheduler.chunk_size=0",
                          "hydra.run.dir=mine/deep"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "scheduler.chunk_size=0 is invalid" in res.stderr, res.stderr
    assert (tmp_path / "mine" / "deep").is_dir() and list((tmp_path / "mine" / "deep").iterdir()) == []
    # A directory this launch made goes, with its parents up to the launch directory.
    res = subprocess.run([sys.executable, "-m", "launch.sim", "pipeline.stages=1", "scheduler.chunk_size=0",
                          "hydra.run.dir=mine/new/deep"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["deep"]
