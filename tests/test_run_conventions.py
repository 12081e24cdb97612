"""launch.run's torchrun and Hydra conventions: Hydra's -m refused with a pointer to pp-sweep, exit codes
1 / 2 / 75, and torchrun's error file written for handled failures (under a real torchrun once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import launch.run
from launch.run import refuse_multirun, run_or_exit
from stages.preemption import EXIT_PREEMPTED
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
BASE = ["workload=synthetic", "workload.num_requests=6", "workload.prefill_len=8", "workload.pd_ratio=1",
        "scheduler=fcfs", "scheduler.token_budget=8", "cache.num_blocks=64", "cache.block_size=4",
        "runtime.progress=false", "tracer.enabled=false", "runtime.timeout_s=30"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # record's faulthandler vs pytest's capture
@pytest.mark.parametrize("flag", ["-m", "--multirun", "hydra.mode=MULTIRUN"])
def test_hydra_multirun_is_refused_at_once_with_a_pointer_to_pp_sweep(monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["launch/run.py", flag, "scheduler=sarathi,orca"])
    with pytest.raises(SystemExit) as exc:
        launch.run.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "pp-sweep" in err and "pp-sweep -m scheduler=sarathi,orca" in err
    assert refuse_multirun(["scheduler=orca", "hydra.run.dir=x"]) is None


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
@pytest.mark.parametrize("override", ["runtime.resume=1", "runtime.no_such_key=3", "scheduler=nope"])
def test_overrides_hydra_rejects_exit_2(monkeypatch, capsys, override):
    monkeypatch.setattr(launch.run, "_composed", False)
    monkeypatch.setattr(sys, "argv", ["launch/run.py", override, "hydra.run.dir=.", "hydra.output_subdir=null"])
    with pytest.raises(SystemExit) as exc:
        launch.run.main()
    assert exc.value.code == 2, capsys.readouterr().err


def _exit_and_error_file(monkeypatch, tmp_path, overrides) -> tuple[int, dict]:
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    with pytest.raises(SystemExit) as exc:
        run_or_exit(make_config(["pipeline.stages=1", f"output_dir={tmp_path}", *BASE, *overrides]))
    return exc.value.code, json.loads(error_file.read_text())["message"]


def test_bad_input_exits_2_and_writes_torchruns_error_file(monkeypatch, tmp_path):
    code, message = _exit_and_error_file(monkeypatch, tmp_path, [f"model.path={tmp_path / 'nowhere'}"])
    assert code == 2
    # torchrun's summary shows the message (no py_callstack); the traceback stays in the file.
    assert message["message"].startswith("bad input (exit 2): model.path=")
    assert "py_callstack" not in message["extraInfo"] and "Traceback" in message["extraInfo"]["traceback"]


def test_a_stage_failure_exits_1_with_its_traceback_in_the_error_file(monkeypatch, tmp_path, model):
    code, message = _exit_and_error_file(monkeypatch, tmp_path, [f"model.path={model}", "debug.fail_stage=0"])
    assert code == 1
    assert "injected failure on stage 0" in message["message"]
    assert "faults.py" in message["extraInfo"]["py_callstack"]  # the traceback of where it was raised


def test_preemption_exits_75(monkeypatch, tmp_path, model):
    code, message = _exit_and_error_file(monkeypatch, tmp_path, [f"model.path={model}", "debug.signal_after=2",
                                                                 "runtime.drain_timeout_s=0"])
    assert code == EXIT_PREEMPTED == 75
    assert message["message"].startswith("Preempted: stopped by SIGTERM")


def _torchrun(args: list[str], log_dir: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
           "--rdzv_endpoint=127.0.0.1:0", "--max_restarts=0", "--monitor_interval=0.1", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def test_torchrun_summary_names_the_root_cause_rank_with_its_traceback(tmp_path, model):
    proc = _torchrun(["-m", "launch.run", f"model.path={model}", *BASE, "debug.fail_stage=1",
                      f"hydra.run.dir={tmp_path}"], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    root = out[out.index("Root Cause"):]
    # (its exit code is 1, or -15 when torchrun's SIGTERM overtook it on its way out after stage 0 exited)
    assert "rank      : 1" in root, root
    assert "error_file: <N/A>" not in root and "InjectedFailure: injected failure on stage 1" in root, root
    assert "Traceback" in root
