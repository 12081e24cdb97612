"""A vocabulary-parallel LM head (stage 0 and the last stage each compute half of the logits): the same tokens as
one head over the whole vocabulary, for greedy, drawn and filtered rows; the stage modules, the message, the split
point, the layer split, and a 2- and 3-stage job with sampled requests."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.config import ConfigError, PipelineConfig
from pp_runtime.model.partition import head_split_point, partition_layers, resolve_head_split
from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.request import SamplingParams
from stages.sampler import SamplingTensors, sample_tensors
from stages.vocab_parallel import HeadSplit, first_stage_tokens, last_stage_part
from tests.jobs import read_outputs, run_job_ranks
from tests.tiny_models import VOCAB, make_tiny_model, tiny_config, write_jsonl


class _Half:
    """The part of a stage model the split head uses: a final norm and some rows of the head."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # [rows, hidden]

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return h * 0.5

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.weight.T).float()


def _piece(i: int, **params) -> Piece:
    return Piece(seq_id=i, start=0, token_ids=(1,), block_table=(0,), is_prefill=False, sample=True,
                 params=SamplingParams(**params), step=i % 5)


PARAMS = [{}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.7, "top_k": 5, "seed": 4},
          {"temperature": 1.3, "top_p": 0.8}, {"temperature": 2.0, "top_k": 40, "top_p": 0.9, "seed": 9},
          {"temperature": 1e-30, "seed": 1}]


def _split_tokens(weight: torch.Tensor, rows: torch.Tensor, pieces: list[Piece], v0: int, dtype=torch.float32):
    """What the two halves sample, through the packed message as the transport carries it."""
    vocab, hidden = weight.shape
    split = HeadSplit(v0, vocab, hidden, dtype)
    mb = MicroBatch(7, tuple(pieces))
    st_ = SamplingTensors.build(pieces, torch.device("cpu"))
    message = last_stage_part(_Half(weight[v0:]), rows, st_, split, mb.id)
    assert message.dtype == torch.uint8 and message.numel() == split.message_bytes(mb)
    return first_stage_tokens(_Half(weight[:v0]), message.clone(), mb, split, torch.device("cpu")).tolist()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_split_head_samples_what_one_head_samples(data):
    vocab = data.draw(st.integers(4, 300))
    v0 = data.draw(st.integers(1, vocab - 1))
    n = data.draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    weight = torch.randn(vocab, 16, generator=gen)
    rows = torch.randn(n, 16, generator=gen) * 3
    if data.draw(st.booleans()):  # ties between the halves: the lower token id wins, as argmax
        weight[v0] = weight[data.draw(st.integers(0, v0 - 1))]
    pieces = [_piece(i, **data.draw(st.sampled_from(PARAMS))) for i in range(n)]
    # One head's logits, made of the halves' own (a GEMM of another width may round a logit another way).
    normed = rows * 0.5
    logits = torch.cat([_Half(weight[:v0]).head_logits(normed), _Half(weight[v0:]).head_logits(normed)], dim=1)
    want = sample_tensors(logits, SamplingTensors.build(pieces, torch.device("cpu")))
    assert _split_tokens(weight, rows, pieces, v0) == want.tolist()


def test_a_tie_across_the_halves_goes_to_the_lower_token_id():
    weight = torch.zeros(10, 4)
    weight[2] = weight[7] = torch.ones(4)  # tokens 2 and 7 share the largest logit
    rows = torch.ones(3, 4)
    assert _split_tokens(weight, rows, [_piece(0), _piece(1), _piece(2)], v0=5) == [2, 2, 2]


def test_filtered_rows_draw_from_both_halves_and_the_message_says_its_micro_batch():
    gen = torch.Generator().manual_seed(0)
    weight, rows = torch.randn(64, 8, generator=gen), torch.randn(2, 8, generator=gen)
    pieces = [_piece(0, temperature=1.0, top_k=64, seed=s) for s in range(2)]
    split = HeadSplit(20, 64, 8, torch.float32)
    mb = MicroBatch(3, tuple(pieces))
    assert split.counts(mb) == (2, 2)
    seen = set()
    for seed in range(200):  # top_k keeps every token: draws land in both halves
        pieces = [_piece(0, temperature=5.0, top_k=64, seed=seed)]
        seen.update(_split_tokens(weight, rows[:1], pieces, 20))
    assert min(seen) < 20 <= max(seen)
    st_ = SamplingTensors.build(pieces, torch.device("cpu"))
    message = last_stage_part(_Half(weight[20:]), rows[:1], st_, split, mb_id=4)
    with pytest.raises(ValueError, match="micro-batch 3, got those of 4"):
        first_stage_tokens(_Half(weight[:20]), message, MicroBatch(3, tuple(pieces)), split, torch.device("cpu"))


def test_the_message_keeps_bfloat16_rows_and_sizes_from_the_plan():
    split = HeadSplit(100, 250, 6, torch.bfloat16)
    pieces = [_piece(0), _piece(1, temperature=1.0, top_p=0.5), _piece(2, temperature=1.0)]
    mb = MicroBatch(5, tuple(pieces))
    normed = torch.randn(3, 6).to(torch.bfloat16)
    filtered = torch.randn(1, 150)
    ids, scores = torch.tensor([1, 2, 3]), torch.tensor([0.5, -1.0, 2.25], dtype=torch.float64)
    buf = split.pack(5, ids, scores, filtered, normed)
    assert buf.numel() == split.message_bytes(mb) == 8 * 4 + 8 * 3 + 4 * 150 + 2 * 18
    mb_id, ids2, scores2, filtered2, normed2 = split.unpack(buf, mb)
    assert mb_id == 5 and ids2.tolist() == [1, 2, 3] and torch.equal(scores2, scores)
    assert torch.equal(filtered2, filtered) and torch.equal(normed2, normed)


def test_split_point_is_aligned_half_and_auto_splits_on_the_cpu_only():
    assert head_split_point(49152) == 24576 and head_split_point(320) == 128 and head_split_point(100) == 50
    assert head_split_point(128256) == 64128 - 64128 % 64
    with pytest.raises(ValueError):
        head_split_point(1)
    assert resolve_head_split("auto", vocab_size=320, num_stages=2, cpu=True) == 128
    assert resolve_head_split("auto", vocab_size=320, num_stages=2, cpu=False) is None
    assert resolve_head_split(True, vocab_size=320, num_stages=2, cpu=False) == 128
    assert resolve_head_split(True, vocab_size=320, num_stages=1, cpu=True) is None
    assert resolve_head_split(False, vocab_size=320, num_stages=3, cpu=True) is None


def test_the_layer_split_prices_half_of_the_head_on_stage_0():
    # 8 layers, a head worth 4 layers: on the last stage alone 6/2; half on each end 4/4.
    assert [len(r) for r in partition_layers(8, 2, head_cost=4.0)] == [6, 2]
    assert [len(r) for r in partition_layers(8, 2, head_cost=4.0, first_head_share=0.5)] == [4, 4]


@pytest.mark.parametrize("value", [1, "yes", None])
def test_split_lm_head_takes_auto_true_or_false(value):
    with pytest.raises(ConfigError, match="pipeline.split_lm_head"):
        PipelineConfig(stages=2, split_lm_head=value).validate()
    for ok in ("auto", True, False):
        PipelineConfig(stages=2, split_lm_head=ok).validate()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])  # tied, untied, tied with learned positions
def test_stage_heads_hold_the_rows_of_the_whole_head(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from stages.stage_model import build_stage_model

    path = make_tiny_model(arch, tmp_path / arch)
    cfg = tiny_config(arch)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    kw = dict(num_stages=2, device=torch.device("cpu"), dtype=torch.float32, head_split=128)
    first = build_stage_model(str(path), cfg, range(0, 2), stage=0, **kw)
    last = build_stage_model(str(path), cfg, range(2, 4), stage=1, **kw)
    assert first.is_first and not first.is_last and last.is_last and not last.is_first
    assert first.head.out_features == 128 and last.head.out_features == VOCAB - 128 and last.vocab_start == 128
    if cfg.tie_word_embeddings:  # stage 0's half is a view of its embeddings, not a copy
        assert first.head.weight.data_ptr() == first.embed.weight.data_ptr()
    h = torch.randn(3, cfg.hidden_size)
    normed = last.final_norm(h)
    got = torch.cat([first.head_logits(normed), last.head_logits(normed)], dim=1)
    with torch.inference_mode():
        want = full.lm_head(normed).float()
    torch.testing.assert_close(got, want)


@pytest.mark.job
@pytest.mark.parametrize("stages", [2, 3])
def test_sampled_requests_get_the_same_tokens_with_the_head_split_or_not(tmp_path, stages):
    model = make_tiny_model("qwen2", tmp_path / "model", num_layers=3)  # untied: stage 0 loads its own rows
    rng = random.Random(4)
    reqs = [{"id": f"r{i}", "prompt_token_ids": [rng.randrange(2, VOCAB) for _ in range(rng.randrange(3, 30))],
             "max_tokens": 6, "ignore_eos": True, **p, "seed": i} for i, p in enumerate(PARAMS)]
    path = write_jsonl(tmp_path / "r.jsonl", reqs)
    outs = {}
    for split in ("true", "false"):
        out = tmp_path / f"out-{split}"
        metrics = run_job_ranks(stages, [f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                                         f"output_dir={out}", f"pipeline.split_lm_head={split}",
                                         "scheduler.token_budget=32", "cache.num_blocks=64", "cache.block_size=4",
                                         "tracer.timeline=false"])
        assert metrics["lm_head_split"] == (128 if split == "true" else None)  # v0 of the 320-token vocabulary
        outs[split] = {k: v["output_token_ids"] for k, v in read_outputs(out).items()}
    assert outs["true"] == outs["false"] and len(outs["true"]) == len(reqs)
    assert len({tuple(v) for v in outs["true"].values()}) > 1


def test_replays_and_the_simulator_count_both_halves_of_the_head():
    import numpy as np

    from pp_runtime.sim.parts import PartTimes
    from pp_runtime.sim.replay import MeasuredTimes
    from pp_runtime.trace.tracer import EventKind

    c = EventKind.COMPUTE
    stage0 = np.array([(c, 0, 10, 0, 4, 0), (c, 10, 20, 1, 0, 2), (c, 30, 33, 0, 0, 0), (c, 40, 45, 1, 0, 0)])
    stage1 = np.array([(c, 10, 25, 0, 4, 0), (c, 25, 40, 1, 0, 2)])
    times = MeasuredTimes({0: stage0, 1: stage1})
    assert times.predict(()) == pytest.approx([13e-9, 15e-9]) and times.predict(()) == pytest.approx([15e-9, 15e-9])
    parts = PartTimes(fixed=1.0, layer=2.0, embed=0.5, head=4.0)
    assert parts.stage_times([2, 2]) == [5.5, 9.0]
    assert parts.stage_times([2, 2], first_head_share=0.25) == [6.5, 8.0]
    assert parts.stage_times([3], first_head_share=0.5) == [11.5]  # one stage holds the whole head
