"""Layer partition: contiguous coverage, the manual override, errors that name the key, optimal balancing, and
the per-layer / LM-head cost estimates on real Hugging Face configs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.config import ConfigError
from pp_runtime.model.partition import HEAD_TOKEN_FRACTION, head_cost_layers, layer_params, partition_layers


def _bottleneck(counts: list[int], head_cost: float) -> float:
    return max([*counts[:-1], counts[-1] + head_cost])


def _brute_force_best(num_layers: int, num_stages: int, head_cost: float) -> float:
    """Lowest bottleneck over every split into ``num_stages`` contiguous non-empty ranges."""
    best = float("inf")
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        bounds = (0, *cuts, num_layers)
        counts = [b - a for a, b in itertools.pairwise(bounds)]
        best = min(best, _bottleneck(counts, head_cost))
    return best


def _assert_contiguous_cover(ranges: list[range], num_layers: int, num_stages: int) -> None:
    assert len(ranges) == num_stages
    assert ranges[0].start == 0
    assert ranges[-1].stop == num_layers
    for prev, nxt in itertools.pairwise(ranges):
        assert prev.stop == nxt.start
    assert all(len(r) >= 1 and r.step == 1 for r in ranges)
    assert [i for r in ranges for i in r] == list(range(num_layers))


@pytest.mark.parametrize("num_layers, num_stages", [(1, 1), (4, 1), (4, 4), (30, 4), (7, 3), (32, 5)])
def test_covers_all_layers_contiguously(num_layers, num_stages):
    _assert_contiguous_cover(partition_layers(num_layers, num_stages), num_layers, num_stages)


def test_even_split_without_head_cost():
    assert partition_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]


def test_head_cost_moves_layers_off_the_last_stage():
    # 8 layers, 2 stages, head worth 2 layers: 5 + 3(+2) has bottleneck 5, the best possible.
    assert partition_layers(8, 2, head_cost=2.0) == [range(0, 5), range(5, 8)]
    # A head worth more than everything else leaves the last stage a single layer.
    assert partition_layers(6, 3, head_cost=10.0)[-1] == range(5, 6)


def test_layers_per_stage_override_is_used_as_given():
    # Deliberately unbalanced: the override wins over balancing and head cost.
    assert partition_layers(6, 3, head_cost=3.0, layers_per_stage=[1, 1, 4]) == [range(0, 1), range(1, 2),
                                                                                range(2, 6)]


def test_more_stages_than_layers_names_pipeline_stages():
    with pytest.raises(ConfigError, match=r"pipeline\.stages=5") as exc:
        partition_layers(4, 5)
    assert "4 decoder layers" in str(exc.value)


@pytest.mark.parametrize("override", [[2, 2], [2, 1, 1, 0], [3, 1, 2], [1, 1, 1], [5, 0, -1]])
def test_bad_override_names_layers_per_stage(override):
    with pytest.raises(ConfigError, match=r"pipeline\.layers_per_stage") as exc:
        partition_layers(5, 3, layers_per_stage=override)
    assert str(override) in str(exc.value)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), num_layers=st.integers(1, 10),
       head_cost=st.one_of(st.just(0.0), st.floats(0.0, 8.0, allow_nan=False, allow_infinity=False)))
def test_balanced_split_matches_brute_force_optimum(data, num_layers, head_cost):
    num_stages = data.draw(st.integers(1, num_layers), label="num_stages")
    ranges = partition_layers(num_layers, num_stages, head_cost=head_cost)
    _assert_contiguous_cover(ranges, num_layers, num_stages)
    got = _bottleneck([len(r) for r in ranges], head_cost)
    # The DP treats costs within 1e-9 as ties, so allow a hair more than that.
    assert got == pytest.approx(_brute_force_best(num_layers, num_stages, head_cost), abs=1e-6)


def test_ties_give_earlier_stages_more_layers():
    # 5 layers over 2 stages: [3, 2] and [2, 3] both have bottleneck 3; the documented tie rule picks [3, 2]
    # (which also keeps the extra layer off the stage that runs the LM head).
    assert [len(r) for r in partition_layers(5, 2)] == [3, 2]


def _layer_weight_count(layer, *, skip_biases: bool) -> int:
    """Weights in a decoder layer's matmuls, counted from the real module (norms excluded)."""
    total = 0
    for name, p in layer.named_parameters():
        if p.dim() < 2 or (skip_biases and name.endswith("bias")):
            continue
        total += p.numel()
    return total


def test_layer_params_llama_matches_real_layer():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=8, num_key_value_heads=2)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert layer_params(cfg) == _layer_weight_count(model.model.layers[0], skip_biases=False)
    # Independently: q and o are 64x64, k and v 64x16 (2 kv heads of 8 dims), gate/up/down 64x96.
    assert layer_params(cfg) == 2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 96


def test_layer_params_gpt2_matches_real_layer():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=500, n_embd=64, n_layer=1, n_head=4, n_positions=32)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    # c_attn (h x 3h) + c_proj (h x h) + MLP with 4h inner size (h x 4h twice) = 12 h^2.
    assert layer_params(cfg) == 12 * 64 * 64
    assert layer_params(cfg) == _layer_weight_count(model.transformer.h[0], skip_biases=True)
    cfg_inner = GPT2Config(vocab_size=500, n_embd=64, n_layer=1, n_head=4, n_inner=100)
    assert layer_params(cfg_inner) == 4 * 64 * 64 + 2 * 64 * 100


def test_head_cost_layers_scales_head_matmul_by_sampled_share():
    from transformers import GPT2Config, LlamaConfig

    llama = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=96, num_attention_heads=8,
                        num_key_value_heads=2)
    per_layer = 2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 96
    assert head_cost_layers(llama) == pytest.approx(1000 * 64 * HEAD_TOKEN_FRACTION / per_layer)
    gpt2 = GPT2Config(vocab_size=1000, n_embd=64, n_head=4)
    assert head_cost_layers(gpt2) == pytest.approx(1000 * 64 * HEAD_TOKEN_FRACTION / (12 * 64 * 64))
    # A bigger vocabulary is a bigger head.
    assert head_cost_layers(LlamaConfig(vocab_size=4000, hidden_size=64, intermediate_size=96,
                                        num_attention_heads=8, num_key_value_heads=2)) > head_cost_layers(llama)


def test_the_split_follows_the_workloads_sampled_share():
    from transformers import LlamaConfig

    from pp_runtime.model.partition import check_layout, sampled_share
    from pp_runtime.request import Request, SamplingParams

    smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64)
    decode_heavy = [Request(f"d{i}", (5,) * 32, SamplingParams(max_tokens=64)) for i in range(3)]
    prefill_heavy = [Request(f"p{i}", (5,) * 192, SamplingParams(max_tokens=16)) for i in range(3)]
    assert sampled_share(decode_heavy) == pytest.approx(64 / 96)
    assert sampled_share(prefill_heavy) == pytest.approx(16 / 208)
    assert sampled_share([]) == HEAD_TOKEN_FRACTION
    decode_split = partition_layers(30, 2, head_cost=head_cost_layers(smol, sampled_share(decode_heavy)))
    prefill_split = partition_layers(30, 2, head_cost=head_cost_layers(smol, sampled_share(prefill_heavy)))
    # More of the tokens reach the LM head: the last stage gets fewer decoder layers to make room for it.
    assert len(decode_split[-1]) < len(prefill_split[-1])
    with pytest.raises(ConfigError, match="pipeline.stages=3"):
        check_layout(2, 3)


def _job(model_overrides: dict, workload: list[str], policy: str = "sarathi", *, memory_gib=None,
         split_head: str = "false"):
    import torch
    from transformers import LlamaConfig

    from pp_runtime.job import resolve_job
    from tests.jobs import make_config

    cfg = make_config([*workload, f"scheduler={policy}", "scheduler.token_budget=128", "pipeline.stages=2",
                       f"pipeline.split_lm_head={split_head}"])
    cfg.validate()
    hf = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, **model_overrides)
    return resolve_job(cfg, hf_config=hf, tokenizer=None, model_dir=None, dtype=torch.float32,
                       device_memory_gib=memory_gib)


SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3)
PREFILL_HEAVY = ["workload=synthetic", "workload.num_requests=32", "workload.prefill_len=192", "workload.pd_ratio=12"]


def test_the_cpu_split_prices_the_lm_head_over_the_micro_batches_sarathi_makes():
    """SARATHI's micro-batches of the prefill-heavy mix hold ~64 tokens and sample ~5 rows: the head's fixed part
    per micro-batch makes it cost ~1.4 layers on SmolLM2, not the 0.6 of the sampled share (measured: ~1.4, so
    the last stage was the slower with 15/15). Stage 0 takes the extra layer."""
    from pp_runtime.model.partition import head_cost_layers, sampled_share

    job = _job(SMOLLM2, PREFILL_HEAVY)
    assert [len(r) for r in job.layer_ranges] == [16, 14] and job.head_split is None
    share = head_cost_layers(job.hf_config, sampled_share(job.requests))
    assert [len(r) for r in partition_layers(30, 2, head_cost=share)] == [15, 15]  # what the share alone gave
    # With the head's vocabulary split between the two ends (the CPU default), each carries half: 15/15.
    split = _job(SMOLLM2, PREFILL_HEAVY, split_head="auto")
    assert [len(r) for r in split.layer_ranges] == [15, 15] and split.head_split == 24576


def test_the_long_prompt_sample_gives_stage_0_five_of_eight_layers_on_the_cpu():
    long = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                num_key_value_heads=2)
    workload = ["workload=synthetic", "workload.num_requests=24", "workload.prefill_len=640", "workload.pd_ratio=13.6"]
    assert [len(r) for r in _job(long, workload).layer_ranges] == [5, 3]
    assert [len(r) for r in _job(long, workload, split_head="auto").layer_ranges] == [4, 4]  # half a head each


def test_on_a_gpu_the_head_keeps_the_sampled_share_of_the_mix():
    """No fixed part is measured on a GPU: the mix's share of sampled rows, as before (15/15 here)."""
    job = _job(SMOLLM2, PREFILL_HEAVY, memory_gib=80.0, split_head="auto")
    assert [len(r) for r in job.layer_ranges] == [15, 15] and job.head_split is None  # auto splits on the CPU only


def test_head_cost_of_mix_counts_a_fixed_part_per_micro_batch(monkeypatch):
    from types import SimpleNamespace

    import pp_runtime.model.partition as part

    hf = SimpleNamespace(vocab_size=100, hidden_size=10)  # head weight 1000
    monkeypatch.setattr(part, "layer_params", lambda cfg: 500)
    # Two micro-batches of 10 tokens sampling 1 row each: (1 + 1 + 2 * 4) * 1000 / ((10 + 10 + 2 * 4) * 500)
    assert part.head_cost_of_mix(hf, [(10, 1), (10, 1)], fixed_rows=4) == pytest.approx(10_000 / 14_000)
    assert part.head_cost_of_mix(hf, [(10, 1), (10, 1)], fixed_rows=0) == pytest.approx(2_000 / 10_000)
    with pytest.raises(ValueError, match="at least one micro-batch"):
        part.head_cost_of_mix(hf, [], fixed_rows=4)
