"""End tokens come from config.json and generation_config.json alike; unseeded sampled requests draw from a per-run
seed (recorded in metrics.json and run_state.json, kept by a resumed run), not from their position in the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pp_runtime.model.source import eos_token_ids
from pp_runtime.request import Request, SamplingParams, with_run_seed
from tests.jobs import make_config, run_job_ranks
from tests.tiny_models import make_tiny_model, reference_generate, tiny_config, write_jsonl


def test_eos_ids_join_config_and_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 201]}))
    assert eos_token_ids(tiny_config("llama"), str(tmp_path)) == [1, 201]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert eos_token_ids(tiny_config("llama"), str(tmp_path)) == [1, 7]
    assert eos_token_ids(tiny_config("llama"), None) == [1]


@pytest.mark.job
def test_a_job_stops_on_an_end_token_listed_only_in_generation_config(tmp_path):
    model = make_tiny_model("llama", tmp_path / "model", num_layers=2)
    prompt = [5, 6, 7, 8]
    ref = reference_generate(model, prompt, 8)
    k = next(i for i, t in enumerate(ref) if i >= 2 and t != 1 and t not in ref[:i])  # first time t appears
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, ref[k]]}))
    assert json.loads((model / "config.json").read_text())["eos_token_id"] == 1
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt_token_ids": prompt, "max_tokens": 8}])
    out = tmp_path / "run"
    run_job_ranks(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}", f"output_dir={out}",
                      "tracer.enabled=false"])
    rec = json.loads((out / "outputs.jsonl").read_text())
    assert rec["output_token_ids"] == ref[:k + 1] and rec["finish_reason"] == "stop"


def _sampled(rid: str, seed=None, temperature=1.0) -> Request:
    return Request(rid, (5, 6), SamplingParams(max_tokens=2, temperature=temperature, seed=seed))


def test_unseeded_sampled_requests_draw_from_the_run_seed_and_their_id():
    a, b = with_run_seed(_sampled("a"), 11), with_run_seed(_sampled("b"), 11)
    assert a.params.seed != b.params.seed  # not one draw for all
    assert with_run_seed(_sampled("a"), 11).params.seed == a.params.seed  # the same run: the same draws
    assert with_run_seed(_sampled("a"), 12).params.seed != a.params.seed  # another run: others
    assert a.params.seed >= 2**32  # not a line number, nor a seed anyone types
    assert with_run_seed(_sampled("a", seed=0), 11).params.seed == 0
    assert with_run_seed(_sampled("a", temperature=0.0), 11).params.seed is None


def test_each_run_draws_its_own_seed_and_a_resumed_run_keeps_it(tmp_path):
    from pp_runtime.rundir.run_state import begin_attempt, plan_resume

    reqs = [_sampled("a"), _sampled("b")]
    cfg = make_config(["pipeline.stages=1", f"output_dir={tmp_path}"])
    first = plan_resume(cfg, reqs)
    begin_attempt(tmp_path, first)
    (tmp_path / "outputs.jsonl").write_text(json.dumps({"id": "a", "finish_reason": "length"}) + "\n")
    assert plan_resume(cfg, reqs).state["sampling_seed"] == first.state["sampling_seed"]
    other = make_config(["pipeline.stages=1", f"output_dir={tmp_path / 'other'}"])
    assert plan_resume(other, reqs).state["sampling_seed"] != first.state["sampling_seed"]


@pytest.mark.job
def test_the_run_seed_is_in_metrics_and_run_state(tmp_path):
    model = make_tiny_model("llama", tmp_path / "model", num_layers=2)
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt_token_ids": [5, 6], "max_tokens": 3,
                                               "temperature": 1.0}])
    seeds = []
    for run in ("one", "two"):
        out = Path(tmp_path / run)
        metrics = run_job_ranks(1, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                                    f"output_dir={out}", "tracer.enabled=false"])
        state = json.loads((out / "run_state.json").read_text())
        assert metrics["sampling_seed"] == state["sampling_seed"] == json.loads(
            (out / "metrics.json").read_text())["sampling_seed"]
        seeds.append(state["sampling_seed"])
    assert seeds[0] != seeds[1]
