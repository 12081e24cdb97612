"""scheduler.token_budget=auto (the default): the knee of the cost model, capped by the TBT SLO, resolved once
before the planner is built; the fallback for policies without a cost model; the simulator and a real job."""

from __future__ import annotations

import json
import random

import pytest

from pp_runtime.config import ConfigError, SchedulerConfig
from pp_runtime.planner import CostModel
from pp_runtime.planner.budget import (
    AUTO_MAX_TOKEN_BUDGET,
    FALLBACK_TOKEN_BUDGET,
    budget_bound,
    candidate_budgets,
    pick_token_budget,
    resolve_token_budget,
)
from pp_runtime.request import Request, SamplingParams
from pp_runtime.rundir.run_state import config_fingerprint
from pp_runtime.sim import simulate
from tests.jobs import make_config, read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, reference_generate, write_jsonl


def _model(c0: float, c_tok: float, c_attn: float = 0.0) -> CostModel:
    return CostModel((c0,), (c_tok,), (c_attn,), (0.0,))


# ---- the knee picker ---------------------------------------------------------------------------------------
def test_a_flat_per_token_time_takes_the_smallest_budget():
    budget, info = pick_token_budget(_model(0.0, 1e-4), chunk_size=256)
    assert budget == candidate_budgets(AUTO_MAX_TOKEN_BUDGET)[0] == 16
    assert info["knee"] == 16 and info["slo_cap"] is None


def test_a_steep_curve_takes_the_largest_budget():
    # The fixed cost dominates: per-token time halves with every doubling, so only the largest is within 5%.
    budget, _ = pick_token_budget(_model(1.0, 1e-6), chunk_size=256)
    assert budget == AUTO_MAX_TOKEN_BUDGET


def test_the_knee_lies_between_for_a_moderate_fixed_cost():
    # per token: 1e-5 / b + 1e-6, best at 4096; within 5% of it needs 1e-5 / b <= ~5.1e-8, b >= ~196: 256.
    assert pick_token_budget(_model(1e-5, 1e-6), chunk_size=256, max_budget=4096)[0] == 256


def test_the_tbt_slo_caps_the_budget():
    model = _model(1e-3, 1e-5)  # t(b) = 1 ms + 10 us * b: the knee is the largest budget
    assert pick_token_budget(model, chunk_size=256)[0] == 1024
    budget, info = pick_token_budget(model, chunk_size=256, tbt_slo_ms=4.0)  # t(256) = 3.56 ms, t(512) = 6.12 ms
    assert budget == 256 and info["slo_cap"] == 256 and info["knee"] == 1024
    assert pick_token_budget(model, chunk_size=256, tbt_slo_ms=0.1)[0] == 16  # nothing fits: the smallest
    assert "slo_unmet_ms" not in info


def test_an_slo_no_budget_meets_is_said_in_the_log_line():
    from pp_runtime.planner.budget import describe

    sched = SchedulerConfig(tbt_slo_ms=0.1)
    _, choice = resolve_token_budget(sched, _model(1e-3, 1e-5))  # 16 tokens: 1.16 ms, over 0.1 ms
    assert choice["value"] == 16 and choice["slo_unmet_ms"] == pytest.approx(1.16)
    line = describe(choice)
    assert "cannot be met" in line and "1.16 ms" in line and "scheduler.tbt_slo_ms" in line
    _, ok = resolve_token_budget(SchedulerConfig(tbt_slo_ms=4.0), _model(1e-3, 1e-5))
    assert "warning" not in describe(ok) and "capped to 256 by scheduler.tbt_slo_ms" in describe(ok)
    # An SLO every budget meets caps nothing: the line does not say it did.
    _, loose = resolve_token_budget(SchedulerConfig(tbt_slo_ms=1e5), _model(1e-3, 1e-5))
    assert loose["value"] == loose["knee"] and "capped" not in describe(loose)


def test_a_chosen_budget_below_the_chunk_size_is_said_in_the_log_line():
    from pp_runtime.planner.budget import describe

    # t(256) = 3.56 ms fits a 4 ms SLO, t(512) does not: chunks of 512 are cut to 256.
    _, choice = resolve_token_budget(SchedulerConfig(chunk_size=512, tbt_slo_ms=4.0), _model(1e-3, 1e-5))
    assert choice["value"] == 256 and "below scheduler.chunk_size=512" in describe(choice)
    _, whole = resolve_token_budget(SchedulerConfig(chunk_size=256, tbt_slo_ms=4.0), _model(1e-3, 1e-5))
    assert "chunk_size" not in describe(whole)


def test_tolerance_edge_is_inclusive():
    # per token: 1024 / b + 1 (units of c_tok): 3.0 at 512, 2.0 at 1024; 3.0 <= 1.5 * 2.0 exactly.
    model = _model(1024.0, 1.0)
    assert pick_token_budget(model, chunk_size=1024, tolerance=0.5)[0] == 512
    assert pick_token_budget(model, chunk_size=1024, tolerance=0.499)[0] == 1024


def test_attention_in_the_per_token_time_favours_smaller_budgets():
    # Chunks as large as the budget: attention grows with b^2, so per-token time rises past a point.
    model = _model(1e-3, 1e-6, c_attn=1e-8)
    budget, info = pick_token_budget(model, chunk_size=AUTO_MAX_TOKEN_BUDGET)
    per_token = {int(b): t for b, t in info["per_token_us"].items()}
    assert budget < AUTO_MAX_TOKEN_BUDGET and per_token[budget] <= 1.05 * min(per_token.values())


# ---- config and resolution ---------------------------------------------------------------------------------
def test_auto_is_the_default_and_bad_values_name_the_key():
    assert SchedulerConfig().token_budget == "auto"
    SchedulerConfig().validate()
    SchedulerConfig(token_budget=64).validate()
    for bad in ("fast", 0, -3, True, 2.5):
        with pytest.raises(ConfigError, match=r"^scheduler\.token_budget=.*integer >= 1, or auto"):
            SchedulerConfig(token_budget=bad).validate()
    assert make_config([]).scheduler.token_budget == "auto"
    assert make_config(["scheduler.token_budget=64"]).scheduler.token_budget == 64


def test_auto_falls_back_without_a_cost_model_and_bounds_buffers():
    orca = SchedulerConfig(policy="orca")
    assert budget_bound(orca) == FALLBACK_TOKEN_BUDGET == 256
    sched, choice = resolve_token_budget(orca, None)
    assert sched.token_budget == 256 and choice["source"] == "fallback" and orca.token_budget == "auto"
    assert budget_bound(SchedulerConfig()) == AUTO_MAX_TOKEN_BUDGET
    assert budget_bound(SchedulerConfig(token_budget=48)) == 48
    sched, choice = resolve_token_budget(SchedulerConfig(token_budget=48), _model(1.0, 1e-6))
    assert sched.token_budget == 48 and choice == {"value": 48, "source": "config"}


def test_the_config_fingerprint_keeps_auto():
    fp = config_fingerprint(make_config(["pipeline.stages=2"]))
    assert fp["scheduler.token_budget"] == "auto" and fp == config_fingerprint(make_config(["pipeline.stages=2"]))


# ---- the simulator -----------------------------------------------------------------------------------------
def _sim(policy: str, model: CostModel):
    cfg = make_config(["pipeline.stages=1", f"scheduler={policy}", "sim.planner_time_us=0"])
    reqs = [Request("r0", (5,) * 100, SamplingParams(max_tokens=2))]
    return simulate(cfg, reqs, time_model=model, hidden_size=4, dtype_bytes=4, max_model_len=256, num_blocks=1024)


def test_pp_sim_resolves_auto_from_its_time_model():
    flat = _model(0.0, 1e-4)  # knee: 16
    result = _sim("sarathi", flat)
    assert result.metrics["token_budget"]["value"] == 16 and result.metrics["token_budget"]["source"] == "knee"
    assert max(mb.num_tokens for mb in result.micro_batches) == 16  # the planner used it
    steep = _model(1.0, 1e-6)
    assert _sim("sarathi", steep).metrics["token_budget"]["value"] == pick_token_budget(steep, chunk_size=256)[0]
    result = _sim("fcfs", flat)
    assert result.metrics["token_budget"] == {"value": 256, "source": "fallback",
                                              "why": "scheduler.policy=fcfs has no cost model"}
    assert max(mb.num_tokens for mb in result.micro_batches) == 100


# ---- a real job --------------------------------------------------------------------------------------------
def test_two_stage_job_with_auto_records_its_budget_and_matches_generate(tmp_path):
    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    rng = random.Random(3)
    reqs = [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": 6,
             "ignore_eos": True} for i, n in enumerate((30, 7, 45))]
    path = write_jsonl(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "out"
    run_job_ranks(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}", "cache.num_blocks=64",
                      "cache.block_size=4", "runtime.cost_model_cache=false", f"output_dir={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["token_budget"]
    assert choice["source"] == "knee" and choice["value"] in candidate_budgets(AUTO_MAX_TOKEN_BUDGET)
    assert choice["value"] == pick_token_budget(CostModel.from_json(out / "cost_model.json"), chunk_size=256)[0]
    assert metrics["config"]["scheduler"]["token_budget"] == "auto"
    got = read_outputs(out)
    for r in reqs:
        assert got[r["id"]]["output_token_ids"] == reference_generate(model, r["prompt_token_ids"], r["max_tokens"])


def test_pp_sim_prints_and_records_the_budget_it_chose(tmp_path, capsys):
    from launch.sim import simulate_job

    cfg = make_config(["pipeline.stages=2", "sim.model_shape=smollm2-135m", "sim.cost_model=roofline",
                       "workload=synthetic", "workload.num_requests=3", "workload.prefill_len=64",
                       "sim.planner_time_us=0", "tracer.timeline=false", f"output_dir={tmp_path}"])
    metrics = simulate_job(cfg)
    choice = metrics["token_budget"]
    assert choice["source"] == "knee" and choice["value"] in candidate_budgets(AUTO_MAX_TOKEN_BUDGET)
    assert f"scheduler.token_budget=auto -> {choice['value']}" in capsys.readouterr().out
    assert metrics["config"]["scheduler"]["token_budget"] == "auto"
