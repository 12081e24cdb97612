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
