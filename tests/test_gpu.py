"""On a CUDA GPU: pipeline outputs against Hugging Face, 1 and 2 stages on one GPU, 2 stages on two GPUs over
NCCL, CUDA graphs on and off.

Skipped where no GPU exists, and in the CPU suite (tests/conftest.py hides CUDA unless GPU tests are asked for):
run them with ``python -m pytest -q -m gpu``. Multi-stage jobs spawn their ranks (fresh interpreters), since this
process has used CUDA and a forked child could not.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, write_jsonl

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPT_LENS = [5, 23, 1, 40, 13, 31]
MAX_TOKENS = [12, 9, 4, 16, 7, 11]
# The Triton kernel needs a power-of-two block size >= 16; a small budget makes chunked prefills and piggybacked
# decodes, and a prime chunk size splits prompts unevenly.
JOB = ["device=cuda", "workload=jsonl", "scheduler=sarathi", "scheduler.token_budget=48", "scheduler.chunk_size=7",
       "cache.block_size=16", "cache.num_blocks=64", "runtime.timeout_s=120"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("gpu") / "llama")


def _requests() -> list[dict]:
    rng = random.Random(2)
    return [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": m,
             "ignore_eos": True} for i, (n, m) in enumerate(zip(PROMPT_LENS, MAX_TOKENS))]


def _run(model_dir, tmp_path, name: str, stages: int, overrides: list[str]) -> dict[str, list[int]]:
    path = write_jsonl(tmp_path / "reqs.jsonl", _requests())
    out = tmp_path / name
    run_job_ranks(stages, [f"model.path={model_dir}", f"workload.path={path}", f"output_dir={out}", *JOB, *overrides],
                  start_method="spawn")
    return {rid: rec["output_token_ids"] for rid, rec in read_outputs(out).items()}


def _hf_model(model_dir, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda().eval()


@torch.inference_mode()
def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("stages,extra", [
    (1, ["model.attention=triton"]),
    (1, ["model.attention=sdpa"]),
    (2, ["model.attention=triton", "pipeline.transport=gloo"]),
    (2, ["model.attention=triton", "pipeline.transport=gloo", "pipeline.split_lm_head=true"]),
], ids=["1st-triton", "1st-sdpa", "2st-triton-gloo", "2st-triton-gloo-split-head"])
def test_greedy_fp32_equals_hf_generate_on_one_gpu(model_dir, tmp_path, stages, extra):
    got = _run(model_dir, tmp_path, "out", stages, ["dtype=float32", *extra])
    hf = _hf_model(model_dir, torch.float32)
    for r in _requests():
        assert got[r["id"]] == _hf_greedy(hf, r["prompt_token_ids"], r["max_tokens"]), r["id"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_stages_on_two_gpus_over_nccl_equal_hf_generate(model_dir, tmp_path):
    # One rank per GPU: rank 1 (the last stage, which samples) must run on cuda:1 throughout: its graphs, its Triton
    # launches and the sampled-token event. Graphs on, so capture and replay on cuda:1 are part of the check.
    extra = ["dtype=float32", "model.attention=triton", "pipeline.transport=nccl", "runtime.cuda_graphs=true"]
    got = _run(model_dir, tmp_path, "nccl", 2, extra)
    hf = _hf_model(model_dir, torch.float32)
    for r in _requests():
        assert got[r["id"]] == _hf_greedy(hf, r["prompt_token_ids"], r["max_tokens"]), r["id"]


def test_cuda_graphs_on_and_off_give_identical_tokens(model_dir, tmp_path):
    # fp32 so that padding a decode batch to its graph bucket cannot flip a near tie through a different GEMM tiling.
    common = ["dtype=float32", "model.attention=triton"]
    eager = _run(model_dir, tmp_path, "eager", 1, [*common, "runtime.cuda_graphs=false"])
    graphs = _run(model_dir, tmp_path, "graphs", 1, [*common, "runtime.cuda_graphs=true"])
    assert graphs == eager
    assert set(eager) == {r["id"] for r in _requests()}


@torch.inference_mode()
def test_bf16_tokens_are_near_hf_best_by_log_prob(model_dir, tmp_path):
    # The pipeline exposes tokens, not log-probs: feed its bf16 greedy tokens back through Hugging Face in bf16
    # (teacher forcing) and check that each was within a small log-prob margin of HF's own best choice at that
    # step. bf16 kernels differ, so near ties may flip (the margin); a wrong pipeline picks tokens nats away.
    got = _run(model_dir, tmp_path, "bf16", 1, ["dtype=bfloat16", "model.attention=triton"])
    hf = _hf_model(model_dir, torch.bfloat16)
    gaps, agree = [], []
    for r in _requests():
        prompt, tokens = r["prompt_token_ids"], got[r["id"]]
        assert len(tokens) == r["max_tokens"]
        ids = torch.tensor([prompt + tokens], device="cuda")
        logp = hf(ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)  # [n, vocab]: predicts each token
        chosen = logp.gather(1, torch.tensor(tokens, device="cuda")[:, None]).squeeze(1)
        gaps += (logp.max(-1).values - chosen).tolist()
        agree += (logp.argmax(-1) == torch.tensor(tokens, device="cuda")).tolist()
    assert max(gaps) <= 1.0, max(gaps)
    assert sum(agree) / len(agree) >= 0.8
