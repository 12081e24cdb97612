"""Whole jobs: seeded sampling, KV-cache rejection, bad input failing before any rank waits, output files."""

from __future__ import annotations

import json

import pytest

from tests.jobs import read_outputs, run_job_outcomes, run_job_ranks
from tests.tiny_models import make_tiny_model, write_jsonl

BASE = ["scheduler=fcfs", "scheduler.token_budget=16", "scheduler.chunk_size=8", "cache.block_size=4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


def _sampled_requests():
    return [{"id": f"s{i}", "prompt_token_ids": list(range(5 + i, 15 + 2 * i)), "max_tokens": 10,
             "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 100 + i, "ignore_eos": True}
            for i in range(4)]


def test_seeded_sampling_is_reproducible_across_runs_and_stage_counts(model, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", _sampled_requests())
    outs = []
    for k, stages in enumerate((1, 2, 1)):
        run_job_ranks(stages, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                               "cache.num_blocks=64", f"output_dir={tmp_path / str(k)}", *BASE])
        outs.append({i: r["output_token_ids"] for i, r in read_outputs(tmp_path / str(k)).items()})
    assert outs[0] == outs[1] == outs[2]
    # Sampling really samples: different seeds give different continuations of the same kind of prompt.
    assert len({tuple(v) for v in outs[0].values()}) == 4
    reseeded = [dict(r, seed=r["seed"] + 1000) for r in _sampled_requests()]
    path2 = write_jsonl(tmp_path / "r2.jsonl", reseeded)
    run_job_ranks(1, [f"model.path={model}", "workload=jsonl", f"workload.path={path2}", "cache.num_blocks=64",
                      f"output_dir={tmp_path / 'reseeded'}", *BASE])
    other = {i: r["output_token_ids"] for i, r in read_outputs(tmp_path / "reseeded").items()}
    assert other != outs[0]


def test_request_too_big_for_cache_is_rejected_and_others_complete(model, tmp_path):
    reqs = [{"id": "small", "prompt_token_ids": [5] * 6, "max_tokens": 4, "ignore_eos": True},
            {"id": "huge", "prompt_token_ids": [6] * 60, "max_tokens": 8, "ignore_eos": True},
            {"id": "small2", "prompt_token_ids": [7] * 9, "max_tokens": 3, "ignore_eos": True}]
    path = write_jsonl(tmp_path / "r.jsonl", reqs)
    metrics = run_job_ranks(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                                "cache.num_blocks=8", f"output_dir={tmp_path}", *BASE])
    out = read_outputs(tmp_path)
    assert set(out) == {"small", "huge", "small2"}  # nothing silently lost
    assert out["huge"]["finish_reason"] == "rejected"
    assert "huge" in out["huge"]["error"] and "needs 67 tokens" in out["huge"]["error"]
    assert "raise cache.num_blocks, or lower" in out["huge"]["error"]  # the key that sizes this cache, and only it
    assert len(out["small"]["output_token_ids"]) == 4 and len(out["small2"]["output_token_ids"]) == 3
    assert metrics["rejected"] == 1 and metrics["completed"] == 2


@pytest.mark.parametrize("bad,needle", [
    ({"id": "empty", "prompt_token_ids": [], "max_tokens": 3}, "'empty'"),
    ({"id": "long", "prompt_token_ids": [3] * 300, "max_tokens": 3}, "'long'"),
    ({"id": "temp", "prompt_token_ids": [3, 4], "temperature": -1.0}, "temperature"),
    ({"id": "topp", "prompt_token_ids": [3, 4], "top_p": 1.5}, "top_p"),
    ({"id": "mt", "prompt_token_ids": [3, 4], "max_tokens": 0}, "max_tokens"),
    ({"id": "typ", "prompt_token_ids": [3, 4], "max_tokens": "5"}, "max_tokens"),
])
def test_bad_request_fails_on_every_rank_before_they_meet(model, tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": "ok", "prompt_token_ids": [3, 4, 5]}, bad])
    outcomes = run_job_outcomes(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                                    "cache.num_blocks=64", f"output_dir={tmp_path}", *BASE], timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "RequestError" in o.error and needle in o.error, o.error
        # Raised in prepare(), before init_process_group: no rank ever waited on another.
        assert "init_process_group" not in o.error and "PipelineError" not in o.error


def test_a_prompt_over_a_lowered_max_model_len_fails_naming_the_key_and_the_models_own_limit(model, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": "ok", "prompt_token_ids": [3, 4, 5]},
                                              {"id": "long", "prompt_token_ids": [3] * 100, "max_tokens": 3}])
    outcomes = run_job_outcomes(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                                    "model.max_model_len=64", "cache.num_blocks=64", f"output_dir={tmp_path}", *BASE],
                                timeout=60)
    for o in outcomes:  # the tiny model has 256 positions
        assert o.exitcode == 1 and "RequestError" in o.error, o.error
        assert "raise model.max_model_len to at least 101 (the model's own limit is 256 positions" in o.error, o.error


def test_config_with_more_stages_than_layers_fails_before_ranks_meet(model, tmp_path):
    outcomes = run_job_outcomes(3, [f"model.path={model}", "workload=synthetic", "workload.num_requests=2",
                                    "cache.num_blocks=64", f"output_dir={tmp_path}", *BASE], timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "pipeline.stages=3" in o.error and "ConfigError" in o.error


def test_job_writes_outputs_metrics_and_reports(model, tmp_path):
    metrics = run_job_ranks(2, [f"model.path={model}", "workload=synthetic", "workload.num_requests=5",
                                "workload.prefill_len=10", "cache.num_blocks=64", f"output_dir={tmp_path}", *BASE])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["num_requests"] == metrics["num_requests"] == 5
    assert on_disk["total_output_tokens"] == sum(len(r["output_token_ids"]) for r in read_outputs(tmp_path).values())
    assert set(on_disk["bubble_fraction"]) == {"0", "1"}
    assert on_disk["config"]["pipeline"]["stages"] == 2
    for name in ("outputs.jsonl", "trace.json", "bubbles.json", "timeline.png", "events.npz"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("asked, stored", [(100, 1), (None, 1), (1, 1)])
def test_metrics_store_max_chunks_in_flight_resolved_and_a_capped_value_is_logged(model, tmp_path, caplog, asked,
                                                                                     stored):
    # One stage: a pipeline depth of 1, so any value above 1 is capped (and null means the depth).
    caplog.set_level("INFO", logger="pp_runtime")
    run_job_ranks(1, [f"model.path={model}", "workload=synthetic", "workload.num_requests=2",
                      "workload.prefill_len=12", "workload.pd_ratio=4", "scheduler=sarathi",
                      "scheduler.time_balanced=false", "scheduler.token_budget=16", "cache.block_size=4",
                      f"scheduler.max_chunks_in_flight={'null' if asked is None else asked}", f"output_dir={tmp_path}"])
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["scheduler"]["max_chunks_in_flight"] == stored
    capped = [r.getMessage() for r in caplog.records if "is above the pipeline depth" in r.getMessage()]
    assert capped == ([f"scheduler.max_chunks_in_flight={asked} is above the pipeline depth: capped at 1, the "
                       f"micro-batches in flight (pipeline.num_microbatches, default pipeline.stages)"]
                      if asked == 100 else [])


def test_metrics_keep_max_chunks_in_flight_null_where_the_policy_ignores_it(model, tmp_path):
    run_job_ranks(1, [f"model.path={model}", "workload=synthetic", "workload.num_requests=2",
                      "workload.prefill_len=12", "workload.pd_ratio=4", *BASE, f"output_dir={tmp_path}"])
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["scheduler"]["max_chunks_in_flight"] is None and config["scheduler"]["policy"] == "fcfs"
