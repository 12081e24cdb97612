"""Online mode: requests are replayed at their arrival times and never admitted before they arrive."""

from __future__ import annotations

import json

import pytest

from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import make_tiny_model, write_jsonl


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


def test_requests_wait_for_their_arrival_times(model, tmp_path):
    arrivals = {"early": 0.0, "mid": 0.6, "late": 1.2}
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"id": rid, "prompt_token_ids": [5, 6, 7, 8], "max_tokens": 3, "ignore_eos": True, "arrival_s": t}
        for rid, t in arrivals.items()])
    metrics = run_job_ranks(2, [f"model.path={model}", "workload=jsonl", f"workload.path={path}", "scheduler=fcfs",
                                "cache.num_blocks=32", "cache.block_size=4", f"output_dir={tmp_path}"])
    out = read_outputs(tmp_path)
    for rid in arrivals:
        # ttft is measured from the request's own arrival: a request admitted early would show a negative one.
        assert 0 <= out[rid]["ttft_s"] <= out[rid]["e2e_s"]
    # The job lasts at least until the last arrival plus its work: it replayed the arrivals in real time.
    assert metrics["duration_s"] >= arrivals["late"]
    assert json.loads((tmp_path / "metrics.json").read_text())["completed"] == 3
