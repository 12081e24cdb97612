"""The installed console scripts (pp-run, pp-sim, pp-tune, pp-sweep, pp-report) work from any directory: each runs
in a subprocess from a temporary directory, with PYTHONPATH on this checkout so that it is this code that runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("pp-run", "pp-sim", "pp-tune", "pp-sweep", "pp-report")


def _script(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed (pip install -e .)")
    return path


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("model") / "llama", num_layers=2)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_works_from_any_directory(name, tmp_path):
    res = _run([_script(name), "--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "not found" not in res.stderr
    if name == "pp-sim":  # Hydra's help alone would hide the replay mode
        assert "pp-sim --replay RUN_DIR" in res.stdout


def test_each_script_runs_a_tiny_job_from_a_temporary_directory(model, tmp_path):
    job = [f"model.path={model}", "workload=synthetic", "workload.num_requests=3", "workload.prefill_len=8",
           "workload.max_tokens=2", "runtime.progress=false", "tracer.timeline=false", "scheduler=fcfs"]
    run = _run([_script("pp-run"), *job, "scheduler.cost_model_path=null", "hydra.run.dir=run"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len((tmp_path / "run" / "outputs.jsonl").read_text().splitlines()) == 3

    sim = _run([_script("pp-sim"), *job, "pipeline.stages=2", "sim.planner_time_us=10", "hydra.run.dir=sim"], tmp_path)
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert json.loads((tmp_path / "sim" / "metrics.json").read_text())["completed"] == 3

    tune = _run([_script("pp-tune"), "--tbt-slo-ms", "1e9", "--max-sims", "2", "--out", "tune", *job,
                 "pipeline.stages=2"], tmp_path)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert (tmp_path / "tune" / "tune" / "best.yaml").is_file()

    sweep = _run([_script("pp-sweep"), "--out", "sweep", *job, "pipeline.stages=1", "scheduler=sarathi,orca",
                  "--dry-run"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "config error" not in sweep.stdout and sweep.stdout.count("nproc=1") == 2

    report = _run([_script("pp-report"), "run", "sim", "--out", "cmp"], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert any((tmp_path / "cmp").iterdir())


@pytest.mark.parametrize("name", ["pp-run", "pp-sim"])
@pytest.mark.parametrize("override", ["scheduler.chunksize=64", "+scheduler.chunksize=64"])
def test_an_unknown_key_is_bad_input_naming_the_closest_key(name, override, tmp_path):
    res = _run([_script(name), override], tmp_path)
    assert res.returncode == 2
    assert "did you mean scheduler.chunk_size?" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3 and "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["pp-run", "pp-sim"])
def test_bad_input_leaves_no_run_directory_behind_but_keeps_an_earlier_runs(name, tmp_path):
    res = _run([_script(name), "pipeline.stages=1", "scheduler.chunk_size=0"], tmp_path)
    assert res.returncode == 2 and "scheduler.chunk_size=0 is invalid" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/ holding only .hydra/ and a log
    if name == "pp-sim":
        return
    # A run directory with an earlier run's outputs (bad input on resuming it) keeps them, and the log says why.
    run = tmp_path / "run"
    run.mkdir()
    (run / "outputs.jsonl").write_text("earlier\n")
    res = _run([_script(name), "scheduler.chunk_size=0", "hydra.run.dir=run"], tmp_path)
    assert res.returncode == 2
    assert (run / "outputs.jsonl").read_text() == "earlier\n" and (run / ".hydra").is_dir()
    assert "scheduler.chunk_size=0 is invalid" in (run / "rank0.log").read_text()


def test_bad_input_under_torchrun_is_one_short_block_and_every_rank_exits_2(model, tmp_path):
    (tmp_path / "requests.jsonl").write_text('{"id": "a", "prompt_token_ids": [5, 6], "max_tokens": 2}\n'
                                             '{"id": "b", "prompt_token_ids": [5, 6], "max_tokens": 0}\n')
    res = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "launch.run",
                f"model.path={model}", "workload=jsonl", "workload.path=requests.jsonl", "hydra.run.dir=run"],
               tmp_path)
    assert res.returncode != 0
    # torchrun's agent prints its own traceback around the summary, but no frame of the job's.
    assert "launch/" not in res.stderr and "pp_runtime/" not in res.stderr, res.stderr
    assert res.stderr.count("error: bad input") == 1  # one block on the console, not one per rank
    assert "[ERROR]" not in res.stderr, res.stderr  # the ranks' log lines go to their rank<N>.log files...
    assert not (tmp_path / "run").exists()  # ...which go with the run directory: nothing ran, nothing is left
    assert res.stderr.count("exitcode  : 2") == 2 and "-15" not in res.stderr, res.stderr
    # torchrun's summary shows the block: the file, the line, the field to change.
    assert "bad input (exit 2): requests.jsonl:2: request 'b': 'max_tokens'=0 must be >= 1" in res.stderr


@pytest.mark.parametrize("bad, code", [(True, 2), (False, 75)])
def test_a_signal_before_the_job_starts_still_reports_bad_input(model, tmp_path, monkeypatch, bad, code):
    """torchrun's SIGTERM (another rank exited) reaching a rank while it starts: bad input still exits 2, as on
    the rank that exited first; otherwise the rank stops before the ranks meet (75), running nothing."""
    import signal

    import launch.run
    from pp_runtime.config import compose_config

    monkeypatch.setattr(launch.run, "_early_signals", [signal.SIGTERM])
    cfg = compose_config([f"model.path={model}", "pipeline.stages=1", f"output_dir={tmp_path}", "workload=synthetic",
                          "workload.num_requests=2", "workload.prefill_len=8",
                          *(["pipeline.layers_per_stage=[5]"] if bad else [])])  # the model has 2 layers
    with pytest.raises(SystemExit) as exc:
        launch.run.run_or_exit(cfg)
    assert exc.value.code == code
    assert not (tmp_path / "outputs.jsonl").exists()


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
def test_main_in_process_leaves_signal_handlers_alone(monkeypatch, capsys):
    """Ignoring torchrun's late SIGTERM on the way out is for torchrun's ranks only: ignored signals are inherited
    by every process started later (a batch shell could no longer trap USR1)."""
    import signal

    import launch.run

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.setattr(sys, "argv", ["pp-run", "scheduler.chunksize=64"])
    with pytest.raises(SystemExit) as exc:
        launch.run.main()
    assert exc.value.code == 2 and "did you mean scheduler.chunk_size?" in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in before} == before


def test_every_config_file_installs_as_package_data():
    """A YAML file that setup.py's package_data misses would be absent from an installed (non-editable) package."""
    import ast
    import fnmatch

    tree = ast.parse((ROOT / "setup.py").read_text())
    data = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                for k in node.keywords if k.arg == "package_data")
    files = [p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")]
    assert files and all(any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in data["conf"])
                         for f in files), (files, data)
    assert (ROOT / "conf" / "__init__.py").is_file()
