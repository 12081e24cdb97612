"""pp-sweep honours hydra.sweep.dir and hydra.sweep.subdir (--out is a shortcut), and a re-run of a finished
sweep into the same directory skips its jobs (one real torchrun job, run once)."""

from __future__ import annotations

import json
import os

import pytest

from launch.sweep import expand, main
from launch.sweep_dirs import place_jobs, split_sweep_dirs
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    model = make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)
    return [f"model.path={model}", "workload=synthetic", "workload.num_requests=3", "workload.prefill_len=8",
            "workload.pd_ratio=2", "cache.num_blocks=64", "cache.block_size=4", "scheduler=fcfs", "device=cpu",
            "runtime.progress=false", "tracer.enabled=false", "pipeline.stages=1"]


def test_sweep_dir_and_subdir_resolve_hydras_interpolations(tmp_path):
    sweep_dir, subdir, rest = split_sweep_dirs(["scheduler=fcfs,orca", f"hydra.sweep.dir={tmp_path}/${{now:%Y}}",
                                                "hydra.sweep.subdir=${hydra.job.num}-${hydra.job.override_dirname}"])
    assert rest == ["scheduler=fcfs,orca"]
    out, jobs = place_jobs(expand(rest)[2], out=None, sweep_dir=sweep_dir, subdir=subdir)
    assert out.parent == tmp_path and out.name.isdigit()  # ${now:%Y}
    assert [j.name for j in jobs] == ["0-scheduler=fcfs", "1-scheduler=orca"]
    _, jobs = place_jobs(expand(rest)[2], out=str(tmp_path), sweep_dir=None, subdir=None)
    assert [j.name for j in jobs] == ["0_scheduler-fcfs", "1_scheduler-orca"]  # the default names
    with pytest.raises(ValueError, match=r"include \$\{hydra.job.num\}"):
        place_jobs(expand(rest)[2], out=None, sweep_dir=str(tmp_path), subdir="same")


def test_out_and_a_different_sweep_dir_are_refused(tmp_path, capsys):
    assert main(["scheduler=fcfs", "--out", str(tmp_path / "a"), f"hydra.sweep.dir={tmp_path / 'b'}"]) == 2
    assert "disagree" in capsys.readouterr().err


def test_sweep_writes_under_hydra_sweep_dir_and_a_rerun_skips_finished_jobs(tmp_path, fixed, capsys):
    sweep = tmp_path / "sweep"
    args = [*fixed, "scheduler.token_budget=8", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=run${hydra.job.num}"]
    assert main(args) == 0
    job_dir = sweep / "run0"
    assert json.loads((job_dir / "run_state.json").read_text())["status"] == "complete"
    assert (sweep / "summary.csv").exists()
    metrics = (job_dir / "metrics.json").read_text()
    logs = sorted(p.name for p in (job_dir / "torchrun").iterdir())
    capsys.readouterr()

    assert main(args) == 0  # the same sweep again: nothing runs
    assert "done earlier, skipped" in capsys.readouterr().out
    assert (job_dir / "metrics.json").read_text() == metrics
    assert sorted(p.name for p in (job_dir / "torchrun").iterdir()) == logs  # no torchrun was started
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 2 and ",ok," in rows[1]

    # A changed config into the same directory is not "done": it would run (and launch.run decides on resuming).
    assert main([*args, "workload.num_requests=4", "--dry-run"]) == 0
    assert "done, skipped" not in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0
    assert "[done, skipped]" in capsys.readouterr().out

    # Run for real, the changed config is refused by launch.run (resume): the finished run's results stay, and the
    # original sweep still finds its job done. The error shown is this run's, not an older run's log that sorts last.
    old_log = job_dir / "torchrun" / "zzzz-older-run" / "attempt_0" / "0" / "stderr.log"
    old_log.parent.mkdir(parents=True)
    old_log.write_text("an older run's error\n")
    os.utime(old_log, (1e9, 1e9))
    assert main([*args, "workload.num_requests=4"]) == 1
    assert "cannot be resumed" in (sweep / "summary.csv").read_text()
    assert (job_dir / "metrics.json").read_text() == metrics
    capsys.readouterr()
    assert main(args) == 0
    assert "done earlier, skipped" in capsys.readouterr().out
