"""pp-sim's run directory: it never overwrites a real run's files (issue: pp-sim into a pp-run directory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pp_runtime.config import ConfigError
from pp_runtime.sim.output import check_sim_out_dir
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
JOB = ["pipeline.stages=2", "workload=synthetic", "workload.num_requests=2", "workload.prefill_len=8",
       "workload.max_tokens=2", "scheduler=fcfs", "sim.planner_time_us=10", "tracer.timeline=false"]


def _real_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "outputs.jsonl").write_text('{"id": "a", "output_token_ids": [7, 8]}\n')
    (path / "metrics.json").write_text(json.dumps({"completed": 1}))
    (path / "run_state.json").write_text(json.dumps({"status": "complete"}))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text("real: run\n")
    return path


@pytest.mark.parametrize("names", [("run_state.json",), ("INCOMPLETE",), ("cost_model.json",), ("outputs.jsonl",),
                                   ("metrics.json",)])
def test_a_real_runs_file_is_refused_naming_the_key(names, tmp_path):
    for name in names:
        (tmp_path / name).write_text("{}\n")
    with pytest.raises(ConfigError, match=rf"hydra.run.dir=.*{names[0]}.*choose another hydra.run.dir"):
        check_sim_out_dir(tmp_path)


def test_an_empty_directory_and_an_earlier_simulation_may_be_written(tmp_path):
    check_sim_out_dir(tmp_path / "new")
    check_sim_out_dir(tmp_path)
    (tmp_path / "outputs.jsonl").write_text('{"id": "a"}\n')
    (tmp_path / "metrics.json").write_text(json.dumps({"sim": {}, "completed": 1}))
    check_sim_out_dir(tmp_path)


def test_pp_sim_refuses_a_real_run_directory_before_writing_anything(tmp_path):
    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    run = _real_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = subprocess.run([sys.executable, "-m", "launch.sim", f"model.path={model}", *JOB, f"hydra.run.dir={run}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "hydra.run.dir=" in res.stderr and "choose another hydra.run.dir" in res.stderr
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # not even .hydra/ or sim.log


def test_simulate_job_refuses_a_real_run_directory_it_is_handed(tmp_path):
    """The same check inside the job: a run directory Hydra resolved from an interpolation, or a caller's."""
    from launch.sim import simulate_job

    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    run = _real_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="run_state.json"):
        simulate_job(make_config([f"model.path={model}", *JOB, f"output_dir={run}"]))
    assert json.loads((run / "metrics.json").read_text()) == {"completed": 1}


def test_replay_refuses_an_out_directory_holding_a_real_run(tmp_path):
    from pp_runtime.sim.replay import replay

    run = _real_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="--out="):
        replay(run, out_dir=run)


@pytest.mark.parametrize("asked, stored", [(None, 2), (100, 2), (1, 1)])
def test_pp_sim_stores_max_chunks_in_flight_resolved_as_a_real_run_does(tmp_path, asked, stored):
    from launch.sim import simulate_job

    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    out = tmp_path / "sim"
    simulate_job(make_config([f"model.path={model}", *JOB, "scheduler=sarathi", f"output_dir={out}",
                              f"scheduler.max_chunks_in_flight={'null' if asked is None else asked}"]))
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["pipeline"]["stages"] == 2 and config["scheduler"]["max_chunks_in_flight"] == stored
