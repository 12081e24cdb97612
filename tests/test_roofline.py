"""Roofline maths against values worked out by hand for a small shape."""

from __future__ import annotations

import pytest

from pp_runtime.sim.hardware import ModelShape
from pp_runtime.sim.roofline import H100_SXM, Costs, Hardware, step_time_s, workload_time_s

# 2 layers, hidden 4, 2 heads + 1 KV head of dim 2, MLP 8, vocab 10, 2-byte weights.
SHAPE = ModelShape("toy", num_layers=2, hidden=4, num_heads=2, num_kv_heads=1, head_dim=2, intermediate=8,
                   gated_mlp=True, vocab=10)
COSTS = Costs(SHAPE)
HW = Hardware("toy", peak_flops=1000.0, bandwidth=100.0)


def test_sizes_by_hand():
    # q and o: 4x4 each; k and v: 4x2 each -> 48; gate, up, down: 3 x 4x8 = 96.
    assert SHAPE.layer_params == 144
    # (2 layers x 144 + LM head 10x4) x 2 bytes.
    assert COSTS.weight_bytes == 656
    # K and V x 2 layers x 1 KV head x dim 2 x 2 bytes.
    assert COSTS.kv_bytes_per_token == 16


def test_flops_by_hand():
    # 3-token prefill: matmuls 2 x 2 x 144 x 3 = 1728; attention 4 x 2 layers x 2 heads x dim 2 x (1+2+3) = 192;
    # LM head on one token 2 x 10 x 4 = 80.
    assert COSTS.prefill_flops(3) == 2000
    # Decode at context 5: matmuls 2 x 288 = 576; attention 4 x 2 x 2 x 2 x 5 = 160; LM head 80.
    assert COSTS.decode_flops(5) == 816


def test_decode_step_is_memory_bound_here():
    # FLOPs 2 x 816 = 1632 -> 1.632 s; bytes 656 + 2 x 5 x 16 = 816 -> 8.16 s.
    assert step_time_s(COSTS, HW, decode_batch=2, context=5) == pytest.approx(8.16)


def test_prefill_step_takes_the_larger_of_compute_and_memory():
    # 3 tokens: 2000 FLOPs -> 2.0 s; weights 656 B -> 6.56 s.
    assert step_time_s(COSTS, HW, prefill_tokens=3) == pytest.approx(6.56)
    fast_memory = Hardware("toy", peak_flops=1000.0, bandwidth=1e6)
    assert step_time_s(COSTS, fast_memory, prefill_tokens=3) == pytest.approx(2.0)


def test_workload_by_hand():
    # Prompts 3 and 1 -> prefill FLOPs 2000 + (576 + 4x2x2x2x1 + 80 = 688) = 2688 -> 2.688 s.
    # Outputs 3 and 1 -> 2 decode steps of weights (1312 B); KV: request 0 decodes at contexts 4 and 5 (9 tokens
    # x 16 B = 144), request 1 has no decode -> 1456 B -> 14.56 s.
    roof = workload_time_s(COSTS, HW, [3, 1], [3, 1])
    assert roof.prefill_s == pytest.approx(2.688)
    assert roof.decode_s == pytest.approx(14.56)
    assert roof.total_s == pytest.approx(17.248)


def test_shape_from_a_hugging_face_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=4096)  # LlamaConfig's own default is 2048
    assert ModelShape.from_hf(cfg, name="toy") == SHAPE and SHAPE.max_context == 4096


def test_llama_1b_preset_figures():
    # The 1.24 B-parameter Llama: 2.47 GB of bf16 weights with the (tied) embedding; the LM head counts
    # once and the embedding gather not at all, so the bytes read per step are the same total.
    shape = Costs(ModelShape("llama-1b", num_layers=16, hidden=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                             intermediate=8192, gated_mlp=True, vocab=128256))
    assert shape.weight_bytes == pytest.approx(2.47e9, rel=0.01)
    # Decode of 8 at context 640 reads the weights plus 8 x 640 x 32 KiB of KV (2.64 GB): 0.788 ms at 3.35 TB/s.
    assert step_time_s(shape, H100_SXM, decode_batch=8, context=640) == pytest.approx(0.788e-3, rel=1e-3)
