"""launch/slurm.sh's signal path, on one node with stand-ins for srun and scontrol: a USR1 to the batch shell
(what --signal=B:USR1@<lead> sends before the time limit) reaches both ranks through srun and torchrun, the run
directory is marked incomplete and the job requeues itself. (Resuming in the same RUN_DIR: test_resume.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multiproc import free_port
from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
FAKES = {
    # srun, one node: drop srun's options and become the task, so a signal to "srun" reaches torchrun
    "srun": 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    "scontrol": 'case "$1" in show) echo localhost ;; requeue) echo "requeue $2" >> "$FAKE_LOG" ;; esac\n',
    "torchrun": f'exec {sys.executable} -m torch.distributed.run "$@"\n',
}


def _slurm(tmp_path: Path, run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               FAKE_LOG=str(tmp_path / "scontrol.log"), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost",
               SLURM_NNODES="1", GPUS_PER_NODE="2", RDZV_PORT=str(free_port()),
               RUN_DIR=str(run_dir))
    return subprocess.Popen(["bash", str(REPO / "launch/slurm.sh"), *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_usr1_to_the_batch_shell_drains_every_rank_and_requeues_the_job(tmp_path):
    model = make_tiny_model("llama", tmp_path / "m", num_layers=2)
    run_dir = tmp_path / "run"
    overrides = [f"model.path={model}", "workload=synthetic", "workload.num_requests=40", "workload.prefill_len=8",
                 "scheduler=fcfs", "scheduler.token_budget=8", "cache.num_blocks=64", "cache.block_size=4",
                 "device=cpu", "tracer.enabled=false", "runtime.progress=false"]
    shell = _slurm(tmp_path, run_dir, [*overrides, "debug.stage_delay_ms=40"])
    outputs = run_dir / "outputs.jsonl"
    deadline = time.monotonic() + 120
    while not (outputs.exists() and outputs.read_bytes().count(b"\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    (torchrun,) = _children(shell.pid)  # the fake srun became torchrun
    ranks = _children(torchrun)
    assert len(ranks) == 2
    shell.send_signal(signal.SIGUSR1)
    out, _ = shell.communicate(timeout=120)
    assert "Unable to shutdown process" not in out  # no rank needed torchrun's SIGKILL after --shutdown-timeout
    for pid in ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no orphans
    assert out.count("preempted: stopped by SIGUSR1") == 2, out  # both ranks drained and exited 75
    assert "SIGUSR1" in (run_dir / "INCOMPLETE").read_text()
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert 2 <= outputs.read_text().count("\n") < 40  # the requeued attempt resumes from here (test_resume.py)
