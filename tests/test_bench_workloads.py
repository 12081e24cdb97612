"""The benchmark scripts' workloads: issue 14's long-prompt sample is what the issue measured."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from pp_runtime.workloads import load_workload
from scripts.bench_policies import long_prompt_model, workloads
from tests.jobs import make_config


def test_the_long_prompt_sample_is_24_requests_of_about_640_prompt_and_47_output_tokens():
    overrides = workloads(Namespace(num_requests=32, length_scale=0.1, workloads="prefill"))["long"]
    assert not any(o.startswith("model.path=") for o in overrides)  # no model made unless the workload is run
    cfg = make_config(overrides)
    requests = load_workload(cfg.workload, tokenizer=None, max_model_len=4096, vocab_size=49152)
    assert len(requests) == 24
    assert abs(np.mean([len(r.prompt_token_ids) for r in requests]) - 640) < 640 * 0.15
    assert abs(np.mean([r.params.max_tokens for r in requests]) - 47) < 47 * 0.2


def test_the_long_prompt_model_is_a_random_llama_of_hidden_384_and_8_layers(tmp_path):
    from transformers import AutoConfig

    path = long_prompt_model(tmp_path)
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 384, 8)
    assert (path / "model.safetensors").exists()
    assert long_prompt_model(tmp_path) == path  # made once


def test_missing_traces_are_named_with_the_variable_to_set(tmp_path, monkeypatch):
    import scripts.bench_policies as bench

    monkeypatch.setattr(bench, "TRACES", tmp_path)
    with pytest.raises(SystemExit, match=f"no request traces .* in {tmp_path}: set PP_RUNTIME_TRACES"):
        bench.trace_files()
    (tmp_path / "t.csv").write_text("x\n")
    assert bench.trace_files() == [tmp_path / "t.csv"]


def test_the_trace_workload_without_traces_exits_before_any_job_naming_where_it_looked(tmp_path, monkeypatch):
    import scripts.bench_policies as bench

    started = []
    monkeypatch.setattr(bench, "TRACES", tmp_path / "none")
    monkeypatch.setattr(bench, "run_torchrun", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit, match=f"no request traces: .* in {tmp_path / 'none'}.*set PP_RUNTIME_TRACES"):
        bench.main(["--workloads", "decode,trace", "--policies", "sarathi", "--out", str(tmp_path / "bp")])
    assert not started
    assert workloads(Namespace(num_requests=4, length_scale=0.1, workloads="decode"))["decode"]  # no trace needed


def test_relative_out_and_input_paths_are_taken_from_the_callers_directory(tmp_path, monkeypatch):
    """The jobs run from the checkout: a relative --out must neither land there nor be read back from elsewhere."""
    import json
    import subprocess

    import scripts.jobs as jobs

    seen = {}

    def fake_run(cmd, *, cwd, **kwargs):  # a job that writes metrics.json where hydra.run.dir says, from cwd
        seen["cmd"], seen["cwd"] = cmd, cwd
        run_dir = Path(cwd) / next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.run.dir="))
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"output_throughput": 1.0}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(jobs.subprocess, "run", fake_run)
    (tmp_path / "reqs.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    m = jobs.run_torchrun(2, ["workload=jsonl", "workload.path=reqs.jsonl", "model.path=some-org/hub-id"],
                          Path("bp") / "run")
    assert m["output_throughput"] == 1.0
    assert (tmp_path / "bp" / "run" / "metrics.json").exists() and seen["cwd"] == jobs.ROOT
    assert f"workload.path={tmp_path / 'reqs.jsonl'}" in seen["cmd"]
    assert "model.path=some-org/hub-id" in seen["cmd"]  # not a folder here: left as given
