"""End to end with the triton attention backend (Triton's interpreter on the CPU: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton, and the forked ranks inherit it), and with one stage and two
micro-batches in flight (tokens read after the next launch): greedy fp32 outputs equal Hugging Face generate."""

from __future__ import annotations

import random

import pytest

from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, reference_generate, write_jsonl

PROMPT_LENS = [5, 19, 1]  # a 19-token prompt crosses a 16-token block
MAX_TOKENS = [6, 5, 4]


def _requests():
    rng = random.Random(2)
    return [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(n)], "max_tokens": m,
             "ignore_eos": True} for i, (n, m) in enumerate(zip(PROMPT_LENS, MAX_TOKENS))]


# (arch, stages, attention, extra overrides): llama has grouped-query attention, mistral a sliding window.
CASES = [
    ("llama", 2, "triton", ["scheduler.chunk_size=7"]),
    ("mistral", 1, "triton", ["scheduler.chunk_size=16"]),
    ("llama", 1, "sdpa", ["scheduler.chunk_size=7", "pipeline.num_microbatches=2"]),
]


@pytest.mark.parametrize("arch,stages,attn,extra", CASES, ids=[f"{a}-{s}st-{b}" for a, s, b, _ in CASES])
def test_backend_matches_generate(tmp_path, arch, stages, attn, extra):
    pytest.importorskip("triton")
    model = make_tiny_model(arch, tmp_path / arch, num_layers=2)
    reqs = _requests()
    path = write_jsonl(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "out"
    run_job_ranks(stages, [f"model.path={model}", "workload=jsonl", f"workload.path={path}", "scheduler=fcfs",
                           "scheduler.token_budget=32", "cache.num_blocks=16", "cache.block_size=16",
                           f"model.attention={attn}", f"output_dir={out}", *extra])
    got = read_outputs(out)
    for r in reqs:
        want = reference_generate(model, r["prompt_token_ids"], r["max_tokens"])
        assert got[r["id"]]["output_token_ids"] == want, r["id"]
