"""The benchmark scripts' workloads: issue 14's long-prompt sample is what the issue measured."""

from __future__ import annotations

from argparse import Namespace

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
