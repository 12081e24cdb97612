"""SARATHI's cost model in a job: profiled on every stage and saved with the layout it was timed on, reused from
scheduler.cost_model_path, and a file for another stage count or layout rejected before the ranks meet."""

from __future__ import annotations

import json

import pytest

from pp_runtime.planner.cost_model import CostModel, recorded_layout, stage_layout
from tests.jobs import run_job_outcomes, run_job_ranks
from tests.tiny_models import make_tiny_model

WORKLOAD = ["workload=synthetic", "workload.num_requests=4", "workload.prefill_len=12", "workload.pd_ratio=2",
            "scheduler=sarathi", "scheduler.token_budget=16", "cache.num_blocks=64", "cache.block_size=4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


def test_profiled_model_is_saved_and_reused(model, tmp_path):
    first = tmp_path / "first"
    run_job_ranks(2, [f"model.path={model}", *WORKLOAD, f"output_dir={first}"])
    fitted = CostModel.from_json(first / "cost_model.json")
    assert fitted.num_stages == 2 and max(fitted.c0 + fitted.c_tok) > 0
    split = json.loads((first / "metrics.json").read_text())["lm_head_split"]
    assert split is not None  # auto splits the head on the CPU with 2 stages
    assert recorded_layout(first / "cost_model.json") == stage_layout([1, 1], split)
    second = tmp_path / "second"
    metrics = run_job_ranks(2, [f"model.path={model}", *WORKLOAD, f"scheduler.cost_model_path={first}/cost_model.json",
                                f"output_dir={second}"])
    assert metrics["completed"] == 4
    assert not (second / "cost_model.json").exists()  # loaded, not profiled again
    assert json.loads((second / "metrics.json").read_text())["config"]["scheduler"]["cost_model_path"]


def test_cost_model_for_another_stage_count_fails_before_ranks_meet(model, tmp_path):
    path = tmp_path / "one_stage.json"
    CostModel.default(1).to_json(path)
    outcomes = run_job_outcomes(2, [f"model.path={model}", *WORKLOAD, f"scheduler.cost_model_path={path}",
                                    f"output_dir={tmp_path}"], timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "ConfigError" in o.error and "scheduler.cost_model_path" in o.error, o.error
        assert "PipelineError" not in o.error


@pytest.mark.parametrize("layout, key", [(stage_layout([1, 1], None), "pipeline.split_lm_head=false"),
                                         (stage_layout([2, 0], 64), "pipeline.layers_per_stage=[2, 0]")])
def test_cost_model_timed_on_another_layout_fails_before_ranks_meet(model, tmp_path, layout, key):
    # Two stages both ways, but the file's stage times were taken with the head whole (the job splits it: auto on
    # the CPU), or with another layer split: the planner would balance with times that are not this job's.
    path = tmp_path / "cm.json"
    CostModel.default(2).to_json(path, layout=layout)
    outcomes = run_job_outcomes(2, [f"model.path={model}", *WORKLOAD, f"scheduler.cost_model_path={path}",
                                    f"output_dir={tmp_path}"], timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "ConfigError" in o.error and "was timed on" in o.error, o.error
        assert key in o.error and "scheduler.cost_model_path=null" in o.error and "PipelineError" not in o.error


def test_a_second_run_takes_the_cost_model_from_the_cache(model, tmp_path, monkeypatch):
    from pp_runtime.model import cost_cache

    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path / "cache"))
    run_job_ranks(2, [f"model.path={model}", *WORKLOAD, f"output_dir={tmp_path / 'first'}"])
    (entry,) = (tmp_path / "cache").glob("*.json")
    data = json.loads(entry.read_text())
    assert data["key"]["layers_per_stage"] == [1, 1] and data["key"]["backend"] == "sdpa"
    # Doctor the entry: the second run's cost_model.json can only hold these numbers if it came from the cache.
    data["c0"] = [0.125, 0.25]
    entry.write_text(json.dumps(data))
    metrics = run_job_ranks(2, [f"model.path={model}", *WORKLOAD, f"output_dir={tmp_path / 'second'}"])
    assert metrics["completed"] == 4
    assert CostModel.from_json(tmp_path / "second" / "cost_model.json").c0 == (0.125, 0.25)
    # Another key (token budget) or the cache turned off: profiled again.
    for extra, name in ((["scheduler.token_budget=32"], "budget"), (["runtime.cost_model_cache=false"], "off")):
        run_job_ranks(2, [f"model.path={model}", *WORKLOAD, *extra, f"output_dir={tmp_path / name}"])
        assert CostModel.from_json(tmp_path / name / "cost_model.json").c0 != (0.125, 0.25)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2 and cost_cache.cache_dir() == tmp_path / "cache"


def test_rank_0_says_what_it_profiles_and_how_to_skip_it_before_profiling(model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path / "cache"))
    caplog.set_level("INFO", logger="pp_runtime")
    run_job_ranks(1, [f"model.path={model}", *WORKLOAD, f"output_dir={tmp_path / 'first'}"])
    lines = [r.getMessage() for r in caplog.records]
    (before,) = [i for i, line in enumerate(lines) if line.startswith("profiling the cost model")]
    assert before < next(i for i, line in enumerate(lines) if line.startswith("cost model fitted"))
    # WORKLOAD: prompts of about 12 tokens and 6 outputs (the longest request sets the context), budget 16.
    assert "of up to 16 tokens, contexts up to" in lines[before] and "the time grows with it" in lines[before]
    assert f"cache ({tmp_path / 'cache'})" in lines[before]
    assert f"scheduler.cost_model_path={tmp_path / 'first'}/cost_model.json" in lines[before]
    caplog.clear()
    run_job_ranks(1, [f"model.path={model}", *WORKLOAD, f"output_dir={tmp_path / 'second'}"])
    assert not any(r.getMessage().startswith("profiling") for r in caplog.records)  # from the cache: nothing run
    caplog.clear()
    path = tmp_path / "first" / "cost_model.json"
    run_job_ranks(1, [f"model.path={model}", *WORKLOAD, f"scheduler.cost_model_path={path}",
                      f"output_dir={tmp_path / 'third'}"])
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"cost model from scheduler.cost_model_path={path} (not profiled)") for line in lines)
    assert not any(line.startswith("profiling") for line in lines)
