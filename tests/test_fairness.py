"""Fair sharing measured: per-request slowdown against the request alone (cost model) and Jain's index, in
metrics.json, each request's outputs.jsonl record (pp-sim and a real run), the bubble report and the sweep summary;
fair prefill order against FCFS on the issue's mix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pp_runtime.config import SchedulerConfig
from pp_runtime.planner import CostModel
from pp_runtime.planner.alone import alone_times
from pp_runtime.planner.cost_model import work
from pp_runtime.request import Request, SamplingParams
from pp_runtime.rundir.metrics import slowdown_metrics
from pp_runtime.sequence import Sequence
from pp_runtime.sim import simulate
from pp_runtime.trace.bubbles import compute_bubbles
from pp_runtime.trace.reports import format_bubble_report
from tests.jobs import make_config

# 3 stages; per micro-batch 1 ms fixed + 10 us per token + 10 ns per prefill pair + 50 ns per decode context token.
MODEL = CostModel((1e-3,) * 3, (1e-5,) * 3, (1e-8,) * 3, (5e-8,) * 3)


def _cfg(*overrides, model=MODEL):
    return make_config([f"pipeline.stages={model.num_stages}", "scheduler=sarathi", "scheduler.token_budget=64",
                        "scheduler.chunk_size=64", "sim.planner_time_us=0", *overrides])


def _sim(requests, *overrides, model=MODEL):
    cfg = _cfg(*overrides, model=model)
    return simulate(cfg, requests, time_model=model, hidden_size=8, dtype_bytes=2, max_model_len=8192,
                    num_blocks=100_000)


def test_alone_pipelines_chunks_through_equal_stages_in_n_plus_s_minus_1_chunk_times():
    flat = CostModel((1e-3,) * 4, (0.0,) * 4, (0.0,) * 4, (0.0,) * 4)  # every micro-batch 1 ms on every stage
    cfg = SchedulerConfig(chunk_size=16, token_budget=16)
    ttft, e2e = alone_times(flat, cfg, num_slots=4, prompt_len=16 * 10, num_outputs=3)
    assert ttft == pytest.approx((10 + 4 - 1) * 1e-3) and e2e == pytest.approx(ttft + 2 * 4e-3)
    serial = SchedulerConfig(chunk_size=16, token_budget=16, max_chunks_in_flight=1)
    assert alone_times(flat, serial, num_slots=4, prompt_len=160, num_outputs=1)[0] == pytest.approx(40e-3)


def test_alone_prices_a_cost_models_decodes_at_once_as_the_per_decode_sum(monkeypatch):
    class Opaque:  # any time model: priced one decode at a time
        num_stages = MODEL.num_stages
        predict = staticmethod(MODEL.predict)

    cfg = SchedulerConfig(chunk_size=64, token_budget=64)
    for prompt_len, outputs in ((100, 1), (100, 2), (1000, 300)):
        expected = alone_times(Opaque(), cfg, num_slots=3, prompt_len=prompt_len, num_outputs=outputs)
        calls = []

        def counted(self, pieces):
            calls.append(1)
            return self.stage_times(*work(pieces))

        monkeypatch.setattr(CostModel, "predict", counted)
        got = alone_times(MODEL, cfg, num_slots=3, prompt_len=prompt_len, num_outputs=outputs)
        monkeypatch.undo()
        assert got == pytest.approx(expected, rel=1e-12)
        # One prediction per prefill chunk, none per output token: rank 0 builds this at every request's finish.
        assert len(calls) == -(-prompt_len // 64)


@pytest.mark.parametrize("balanced", [False, True])
def test_a_request_alone_in_the_simulator_has_slowdown_one(balanced):
    # Time-balanced chunks shrink deep into the prompt (attention over the prefix): the yardstick cuts the same
    # chunks as the planner, or a lone prompt would read slower than itself.
    req = [Request("only", (5,) * 500, SamplingParams(max_tokens=4, ignore_eos=True))]
    res = _sim(req, f"scheduler.time_balanced={str(balanced).lower()}")
    assert len({len(p.token_ids) for mb in res.micro_batches for p in mb.pieces if p.is_prefill}) > (1 + balanced)
    s = res.metrics["slowdown"]
    assert s["num_requests"] == 1
    assert s["median_ttft"] == pytest.approx(1.0, rel=1e-9) and s["median_e2e"] == pytest.approx(1.0, rel=1e-9)
    assert s["jain_ttft"] == pytest.approx(1.0)


def test_jains_index_is_one_for_equal_slowdowns_and_one_over_n_for_one_victim():
    def seq(i, ttft):
        s = Sequence(i, Request(f"r{i}", (1,), SamplingParams(max_tokens=1)))
        s.first_token_s = s.finish_s = ttft
        return s
    alone = lambda s: (1.0, 1.0)  # noqa: E731
    assert slowdown_metrics([seq(i, 3.0) for i in range(4)], alone)["jain_ttft"] == pytest.approx(1.0)
    lopsided = slowdown_metrics([seq(0, 1e6)] + [seq(i, 1e-9) for i in range(1, 4)], alone)
    assert lopsided["jain_ttft"] == pytest.approx(0.25, rel=1e-6) and lopsided["max_ttft"] == 1e6


def _mix():
    long = [Request("long", tuple(range(2, 2002)), SamplingParams(max_tokens=4, ignore_eos=True))]
    return long + [Request(f"s{i}", (7,) * 32, SamplingParams(max_tokens=4, ignore_eos=True), arrival_s=1e-4)
                   for i in range(16)]


def test_fair_order_cuts_the_short_requests_slowdown():
    fair, fcfs = (_sim(_mix(), f"scheduler.prefill_order={o}") for o in ("fair", "fcfs"))
    ttft = {name: sorted(s.first_token_s - s.request.arrival_s for s in r.seqs[1:])
            for name, r in (("fair", fair), ("fcfs", fcfs))}
    assert ttft["fair"][8] < ttft["fcfs"][8] / 3  # the short ones' median TTFT
    long_fair, long_fcfs = fair.seqs[0].first_token_s, fcfs.seqs[0].first_token_s
    assert long_fair <= 1.3 * long_fcfs  # the long prompt pays little for it
    # Jain's index measures evenness, not size: FCFS slows the 16 short ones alike (and a lot), so it is no test.
    for key in ("median_ttft", "max_ttft", "p90_e2e"):
        assert fair.metrics["slowdown"][key] < fcfs.metrics["slowdown"][key], key


def test_the_bubble_report_prints_the_slowdown_line():
    res = _sim(_mix())
    text = format_bubble_report(compute_bubbles(res.events), slowdown=res.metrics["slowdown"])
    assert "slowdown vs alone" in text and "Jain's index" in text


def test_the_sweep_summary_has_slowdown_and_jain_columns(tmp_path):
    from launch.sweep_summary import Job, JobResult, write_summary

    metrics = {"output_throughput": 10.0, "slowdown": {"median_ttft": 1.25, "jain_ttft": 0.9}}
    table = write_summary(tmp_path, ["scheduler.prefill_order"], [
        JobResult(Job("0_fair", {"scheduler.prefill_order": "fair"}, ()), "ok", metrics=metrics)])
    cells = [c.strip() for c in table.splitlines()[-1].split("|")]
    assert "TTFT slowdown p50" in table and "Jain TTFT" in table and cells[-3:-1] == ["1.25", "0.900"]


def _assert_records_match_metrics(records: list[dict], slowdown: dict) -> None:
    """Every completed record carries a slowdown, and their stats are metrics.json's."""
    for name in ("ttft", "e2e"):
        x = np.asarray([r["slowdown"][name] for r in records])
        assert len(x) == slowdown["num_requests"]
        assert np.median(x) == pytest.approx(slowdown[f"median_{name}"], rel=1e-12)
        assert x.max() == pytest.approx(slowdown[f"max_{name}"], rel=1e-12)
        assert x.sum() ** 2 / (len(x) * (x * x).sum()) == pytest.approx(slowdown[f"jain_{name}"], rel=1e-12)


def test_pp_sim_records_each_requests_slowdown_in_outputs_jsonl(tmp_path):
    from pp_runtime.sim.output import write_sim_run

    res = _sim(_mix())
    write_sim_run(tmp_path, res, _cfg("tracer.timeline=false"))
    records = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert len(records) == 17
    _assert_records_match_metrics(records, json.loads((tmp_path / "metrics.json").read_text())["slowdown"])
    by_id = {r["id"]: r["slowdown"] for r in records}
    assert by_id["long"]["ttft"] < by_id["s0"]["ttft"]  # the long prompt is slowed less than the short ones


@pytest.mark.job
def test_a_real_run_records_each_requests_slowdown_and_none_for_a_rejected_one(tmp_path):
    from tests.jobs import read_outputs, run_job_ranks
    from tests.tiny_models import make_tiny_model, write_jsonl

    model = make_tiny_model("llama", tmp_path / "model", num_layers=2)
    reqs = [{"id": f"s{i}", "prompt_token_ids": [5 + i] * (6 + 3 * i), "max_tokens": 3, "ignore_eos": True}
            for i in range(3)]
    reqs.append({"id": "huge", "prompt_token_ids": [6] * 60, "max_tokens": 3, "ignore_eos": True})  # > the cache
    path = write_jsonl(tmp_path / "r.jsonl", reqs)
    out = tmp_path / "run"
    run_job_ranks(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}", f"output_dir={out}",
                      "scheduler=sarathi", "scheduler.token_budget=16", "cache.block_size=4", "cache.num_blocks=8",
                      "tracer.enabled=false"])
    records = read_outputs(out)
    assert records["huge"]["finish_reason"] == "rejected" and records["huge"]["slowdown"] is None
    done = [r for r in records.values() if r["finish_reason"] != "rejected"]
    assert all(r["slowdown"]["ttft"] > 0 and r["slowdown"]["e2e"] > 0 for r in done)
    _assert_records_match_metrics(done, json.loads((out / "metrics.json").read_text())["slowdown"])
