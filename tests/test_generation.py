"""End to end: pipeline outputs equal Hugging Face ``generate`` (greedy, fp32), for every architecture,
1-3 stages and chunk sizes of 1, a prime and more than the longest prompt, on one ragged job."""

from __future__ import annotations

import random

import pytest

from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, reference_generate, write_jsonl

# (arch, stages, chunk_size): every architecture on 1, 2 and 3 stages, chunk sizes rotating through
# 1, a prime and one longer than any prompt.
CASES = [
    ("llama", 1, 7), ("llama", 2, 1), ("llama", 3, 64),
    ("qwen2", 1, 64), ("qwen2", 2, 7), ("qwen2", 3, 1),
    ("mistral", 1, 1), ("mistral", 2, 64), ("mistral", 3, 7),
    ("gpt2", 1, 7), ("gpt2", 2, 64), ("gpt2", 3, 1),
]
PROMPT_LENS = [5, 23, 1, 40, 13]  # ragged; 40 tokens of prompt + 12 of output crosses several chunks
MAX_TOKENS = [12, 9, 4, 12, 7]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("llama", "qwen2", "mistral", "gpt2")}


def _requests():
    rng = random.Random(1)
    return [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": m,
             "ignore_eos": True} for i, (n, m) in enumerate(zip(PROMPT_LENS, MAX_TOKENS))]


@pytest.mark.parametrize("arch,stages,chunk", CASES, ids=[f"{a}-{s}st-chunk{c}" for a, s, c in CASES])
def test_pipeline_matches_generate(models, tmp_path, arch, stages, chunk):
    reqs = _requests()
    path = write_jsonl(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "out"
    run_job_ranks(stages, [f"model.path={models[arch]}", "workload=jsonl", f"workload.path={path}",
                           "scheduler=fcfs", f"scheduler.chunk_size={chunk}", "scheduler.token_budget=48",
                           "cache.num_blocks=64", "cache.block_size=4", f"output_dir={out}"])
    got = read_outputs(out)
    for r in reqs:
        want = reference_generate(models[arch], r["prompt_token_ids"], r["max_tokens"])
        assert got[r["id"]]["output_token_ids"] == want, f"{r['id']} ({len(r['prompt_token_ids'])} prompt tokens)"
        assert got[r["id"]]["finish_reason"] == "length"


# Long prompts under sarathi with chunk pipelining: hundreds of tokens in chunks of 3-17, several chunks of one
# prompt in flight at once; a small cache forces preemption (recompute) in the middle of chunked prompts.
# The qwen2 case balances chunks by the profiled cost model (the default); the others by tokens, to save time.
LONG_CASES = [("llama", 2, 7, 64), ("qwen2", 3, 13, 1024), ("llama", 3, 3, 80), ("mistral", 2, 17, 1024)]


@pytest.mark.parametrize("arch,stages,chunk,num_blocks", LONG_CASES,
                         ids=[f"{a}-{s}st-chunk{c}-{b}blocks" for a, s, c, b in LONG_CASES])
def test_long_prompts_with_pipelined_chunks_match_generate(models, tmp_path, arch, stages, chunk, num_blocks):
    rng = random.Random(2)
    reqs = [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": m,
             "ignore_eos": True} for i, (n, m) in enumerate([(240, 6), (131, 8), (9, 5), (200, 4)])]
    out = tmp_path / "out"
    metrics = run_job_ranks(stages, [
        f"model.path={models[arch]}", "workload=jsonl", f"workload.path={write_jsonl(tmp_path / 'r.jsonl', reqs)}",
        "scheduler=sarathi", f"scheduler.chunk_size={chunk}", f"scheduler.token_budget={2 * chunk}",
        f"cache.num_blocks={num_blocks}", "cache.block_size=4", "tracer.timeline=false", f"output_dir={out}",
        f"scheduler.time_balanced={arch == 'qwen2'}"])
    got = read_outputs(out)
    for r in reqs:
        want = reference_generate(models[arch], r["prompt_token_ids"], r["max_tokens"])
        assert got[r["id"]]["output_token_ids"] == want, f"{r['id']} ({len(r['prompt_token_ids'])} prompt tokens)"
    if arch == "qwen2":  # profiled cost model: its error per (micro-batch, stage) and the slowdowns are reported
        assert metrics["cost_model_error"]["num_samples"] > 0 and metrics["cost_model_error"]["median"] >= 0
        assert metrics["slowdown"]["num_requests"] == len(reqs)
    if num_blocks < 128:  # 64 blocks of 4 hold 256 tokens: the 240-token prompt and any other cannot share them
        assert sum(r["num_preemptions"] for r in got.values()) > 0
