"""scripts.bench_gpu's CPU-checkable parts: the refusal without CUDA, the workload file, the presets' sizes."""

from __future__ import annotations

import json

import pytest
import torch

from pp_runtime.sim.hardware import ModelShape
from pp_runtime.sim.roofline import Costs
from scripts.bench_gpu import MAX_OUTPUT, MAX_PROMPT, NUM_REQUESTS, PRESETS, main, write_workload
from scripts.gpu_busy import GpuBusy, nvml_key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_refuses_clearly_without_cuda(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "docs/BENCHMARKS.md" in err


def test_workload_is_the_issues_fixed_mix(tmp_path):
    prompts, outputs = write_workload(tmp_path / "r.jsonl", vocab=500, seed=3)
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == len(prompts) == NUM_REQUESTS
    assert [len(r["prompt_token_ids"]) for r in lines] == prompts
    assert [r["max_tokens"] for r in lines] == outputs
    assert all(1 <= n <= MAX_PROMPT for n in prompts) and all(1 <= m <= MAX_OUTPUT for m in outputs)
    assert all(r["ignore_eos"] and "temperature" not in r for r in lines)  # greedy, EOS ignored
    assert all(0 <= t < 500 for r in lines for t in r["prompt_token_ids"])
    assert len(set(r["id"] for r in lines)) == NUM_REQUESTS
    # Spread over the whole range, and the same file for the same seed.
    assert min(prompts) < 100 and max(prompts) > 900 and min(outputs) < 30 and max(outputs) > 220
    assert write_workload(tmp_path / "again.jsonl", vocab=500, seed=3) == (prompts, outputs)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "r.jsonl").read_text()


@pytest.mark.parametrize("preset,total_params", [("llama-3.2-1b", 1.236e9), ("llama-3.1-8b", 8.030e9)])
def test_presets_have_the_real_models_sizes(preset, total_params):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**PRESETS[preset])
    costs = Costs(ModelShape.from_hf(cfg))
    shape = costs.shape
    read = costs.weight_bytes // costs.dtype_bytes  # layers + LM head
    # The published parameter counts include the embedding table once more unless it is tied to the LM head.
    embedding = 0 if cfg.tie_word_embeddings else shape.vocab * shape.hidden
    norms = (2 * shape.num_layers + 1) * shape.hidden
    assert read + embedding + norms == pytest.approx(total_params, rel=1e-3)


def test_gpu_busy_averages_the_samples_inside_the_window():
    busy = GpuBusy()
    busy.samples = [(0.5, 100), (1.0, 20), (2.0, 40), (3.5, 90)]
    assert busy.fraction(1.0, 3.0) == pytest.approx(0.30)
    assert busy.fraction(5.0, 6.0) is None


def test_nvml_finds_the_cuda_device_not_nvml_index_0():
    # By PCI address when torch reports it (CUDA's order and NVML's may differ), else via CUDA_VISIBLE_DEVICES.
    assert nvml_key(0, pci=(0, 0x9B, 0), visible="3") == ("pci", "0000:9b:00.0")
    assert nvml_key(1, pci=None, visible="5,2") == ("index", 2)
    assert nvml_key(0, pci=None, visible="GPU-8f3c-aa, GPU-11") == ("uuid", "GPU-8f3c-aa")
    assert nvml_key(1, pci=None, visible=None) == ("index", 1)
    assert nvml_key(2, pci=None, visible="0,1") == ("index", 2)  # past the list: nothing better to go on


def test_a_rerun_into_the_same_out_starts_over(tmp_path):
    # Each bench run saves its model into a new temporary folder; a second run into the same --out must neither
    # be refused (model.path is in the run directory's fingerprint) nor skip the requests the first one finished.
    import shutil

    from scripts.bench_gpu import job_overrides
    from tests.jobs import read_outputs, run_job_ranks
    from tests.tiny_models import make_tiny_model, write_jsonl

    first = make_tiny_model("llama", tmp_path / "model-1", num_layers=2)
    second = shutil.copytree(first, tmp_path / "model-2")
    reqs = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "prompt_token_ids": [3, 4, 5], "max_tokens": 2,
                                               "ignore_eos": True} for i in range(2)])
    out = tmp_path / "out"
    for model_dir in (first, second):
        cpu = [o.replace("device=cuda", "device=cpu").replace("dtype=bfloat16", "dtype=float32")
               for o in job_overrides(model_dir, reqs, cache_gib=0.001)]
        metrics = run_job_ranks(1, [*cpu, f"output_dir={out}", "tracer.enabled=false"])
        assert metrics["completed"] == 2  # both requests ran again, not resumed as done
    assert set(read_outputs(out)) == {"r0", "r1"}
