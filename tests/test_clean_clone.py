"""The README's two commands, their essential parts, on a clean clone as CI runs them: ``pip install -e .`` into a
fresh virtualenv, ``torchrun --nproc_per_node=2 -m launch.run`` in the clone (a tiny model instead of the
embedded one), an installed command from another directory, and the test suite collecting from the clone.

The clone is this checkout's tracked and not-ignored files (what the next commit holds); the virtualenv sees the
machine's packages (torch, transformers...), so ``pip install --no-deps`` installs only the project itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
_OFFLINE = ("NewConnectionError", "No matching distribution", "Could not find a version", "Network is unreachable")


def _clone(dest: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed clone, nothing else
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_commands_work_on_a_clean_clone(tmp_path):
    clone = _clone(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / "bin"
    pip = _run([str(bin_dir / "pip"), "install", "-q", "--no-deps", "-e", "."], clone)
    if pip.returncode != 0 and any(s in pip.stdout + pip.stderr for s in _OFFLINE):
        pytest.skip("pip cannot fetch its build backend here (offline)")
    assert pip.returncode == 0, pip.stderr[-3000:]
    where = _run([str(bin_dir / "python"), "-c", "import conf, launch; print(conf.__file__); print(launch.__file__)"],
                 tmp_path)
    assert where.returncode == 0 and all(line.startswith(str(clone)) for line in where.stdout.split()), where

    model = make_tiny_model("llama", tmp_path / "model", num_layers=2)
    job = [f"model.path={model}", "workload=synthetic", "workload.num_requests=3", "workload.prefill_len=8",
           "workload.max_tokens=2", "runtime.progress=false", "tracer.timeline=false", "scheduler=fcfs"]
    # torchrun is torch.distributed.run; the virtualenv sees torch but has no torchrun script of its own.
    run = _run([str(bin_dir / "python"), "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "launch.run", *job,
                f"hydra.run.dir={tmp_path / 'run'}"], clone)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len((tmp_path / "run" / "outputs.jsonl").read_text().splitlines()) == 3

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sim = _run([str(bin_dir / "pp-sim"), *job, "pipeline.stages=2", "sim.planner_time_us=10", "hydra.run.dir=sim"],
               elsewhere)
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert (elsewhere / "sim" / "metrics.json").is_file()

    collect = _run([str(bin_dir / "python"), "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                    "tests"], clone)
    assert collect.returncode == 0, collect.stdout[-3000:]
