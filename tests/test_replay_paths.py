"""pp-sim --replay finds a run's relative paths (workload.path=chat.jsonl) from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pp_runtime.planner import CostModel
from pp_runtime.sim.replay import load_run_config, replay
from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def test_a_relative_workload_path_is_found_from_another_directory(tmp_path, monkeypatch):
    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    launch_dir, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch_dir.mkdir()
    elsewhere.mkdir()
    (launch_dir / "chat.jsonl").write_text('{"id": "a", "prompt_token_ids": [5, 6, 7], "max_tokens": 3}\n'
                                           '{"id": "b", "prompt_token_ids": [5, 6], "max_tokens": 2}\n')
    res = subprocess.run([sys.executable, "-m", "launch.sim", "pipeline.stages=2", f"model.path={model}",
                          "workload=jsonl", "workload.path=chat.jsonl", "scheduler=fcfs", "sim.planner_time_us=10",
                          "tracer.timeline=false", "hydra.run.dir=run"],
                         cwd=launch_dir, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    run = launch_dir / "run"
    monkeypatch.chdir(elsewhere)
    assert load_run_config(run).workload.path == str(launch_dir / "chat.jsonl")
    CostModel.default(2).to_json(elsewhere / "cm.json")
    result, _ = replay(run, out_dir=elsewhere / "replay", cost_model_path="cm.json", preset_links=True)
    assert result.metrics["completed"] == 2


def test_without_hydra_yaml_a_relative_path_stays_as_recorded(tmp_path):
    import json
    from dataclasses import asdict

    from tests.jobs import make_config

    config = asdict(make_config(["workload=jsonl", "workload.path=chat.jsonl", "pipeline.stages=2"]))
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config}))
    assert load_run_config(tmp_path).workload.path == "chat.jsonl"


def test_the_launch_dir_a_run_recorded_wins_over_a_later_launchs_hydra_yaml(tmp_path):
    # A later launch into the same directory (a bad input, a refused resume) rewrites .hydra/hydra.yaml with its own
    # cwd; metrics.json's launch_dir is the finished run's own.
    import json
    from dataclasses import asdict

    from tests.jobs import make_config

    first, later, run = tmp_path / "first", tmp_path / "later", tmp_path / "run"
    for d in (first, later, run / ".hydra"):
        d.mkdir(parents=True)
    (first / "chat.jsonl").write_text("{}\n")
    (later / "chat.jsonl").write_text("{}\n")
    config = asdict(make_config(["workload=jsonl", "workload.path=chat.jsonl", "pipeline.stages=2"]))
    (run / "metrics.json").write_text(json.dumps({"config": config, "launch_dir": str(first)}))
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {later}\n")
    assert load_run_config(run).workload.path == str(first / "chat.jsonl")
    (run / "metrics.json").write_text(json.dumps({"config": config}))  # a run recorded before launch_dir
    assert load_run_config(run).workload.path == str(later / "chat.jsonl")
