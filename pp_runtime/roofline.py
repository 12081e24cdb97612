"""Roofline times: how fast a decoder could run a step or a workload on a GPU with a given peak and bandwidth.

Counted for decoder-only models with a gated MLP (Llama, Qwen2, Mistral), no sliding window:
- FLOPs: 2 per weight per token for the layers' matmuls, 2 per LM-head weight per sampled token, and
  ``4 * heads * head_dim`` per layer per (query, key) pair of attention (QK^T and PV).
- Bytes: the layers' and LM head's weights once per step (the embedding table is gathered, not read whole),
  plus every key and value a decode token attends to.
A step takes at least ``max(FLOPs / peak, bytes / bandwidth)``. The workload's roofline is, as in issue 8, its
prefill FLOPs at the peak plus its decode bytes at the bandwidth, with every request decoding in one batch:
the weights are read once per decode step of the longest output, and each decode token reads its context's KV.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # dense FLOP/s at the model's dtype
    bandwidth: float  # memory bytes/s


# NVIDIA H100 SXM: dense bf16 tensor-core peak and HBM3 bandwidth from the data sheet.
H100_SXM = Hardware("H100 SXM", peak_flops=989e12, bandwidth=3.35e12)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    bytes_per_param: int = 2  # bf16 weights and KV cache

    @staticmethod
    def from_hf_config(cfg, *, bytes_per_param: int = 2) -> ModelShape:
        """From a Hugging Face Llama-like config (num_hidden_layers, hidden_size, ... , vocab_size)."""
        heads = cfg.num_attention_heads
        return ModelShape(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=heads,
                          kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                          head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                          intermediate=cfg.intermediate_size, vocab=cfg.vocab_size, bytes_per_param=bytes_per_param)

    @property
    def layer_params(self) -> int:
        """Matmul weights of one decoder layer: q, k, v, o projections and the gate, up, down MLP."""
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attn + 3 * self.hidden * self.intermediate

    @property
    def weight_bytes(self) -> int:
        """Bytes read by one forward step: every layer's weights and the LM head (norms are negligible)."""
        return (self.layers * self.layer_params + self.vocab * self.hidden) * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param

    def _attn_flops(self, pairs: int) -> int:
        return 4 * self.layers * self.heads * self.head_dim * pairs

    def prefill_flops(self, tokens: int) -> int:
        """FLOPs of a causal prefill of ``tokens`` tokens from position 0, sampling its last token."""
        return (2 * self.layers * self.layer_params * tokens + self._attn_flops(tokens * (tokens + 1) // 2)
                + 2 * self.vocab * self.hidden)

    def decode_flops(self, context: int) -> int:
        """FLOPs of one decode token that attends to ``context`` tokens (itself included), sampled."""
        return 2 * self.layers * self.layer_params + self._attn_flops(context) + 2 * self.vocab * self.hidden


def step_time_s(shape: ModelShape, hw: Hardware, *, prefill_tokens: int = 0, decode_batch: int = 0,
                context: int = 0) -> float:
    """Roofline of one step: a prefill of ``prefill_tokens`` from position 0 and/or ``decode_batch`` decode
    tokens each attending to ``context`` tokens; ``max(FLOPs / peak, bytes / bandwidth)``."""
    flops = decode_batch * shape.decode_flops(context)
    if prefill_tokens:
        flops += shape.prefill_flops(prefill_tokens)
    nbytes = shape.weight_bytes + decode_batch * context * shape.kv_bytes_per_token
    return max(flops / hw.peak_flops, nbytes / hw.bandwidth)


@dataclass(frozen=True)
class WorkloadRoofline:
    prefill_s: float  # every prompt's prefill FLOPs at the peak
    decode_s: float  # weights once per decode step plus every decode token's KV reads, at the bandwidth

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def workload_time_s(shape: ModelShape, hw: Hardware, prompt_lens: list[int],
                    output_lens: list[int]) -> WorkloadRoofline:
    """Roofline of an offline workload: request i has ``prompt_lens[i]`` prompt tokens and ``output_lens[i]``
    output tokens (the first comes from the prefill, the other ``output_lens[i] - 1`` from decode steps)."""
    prefill_flops = sum(shape.prefill_flops(p) for p in prompt_lens)
    steps = max((n - 1 for n in output_lens), default=0)
    # Decode k (1-based) of a p-token prompt attends to p + k tokens: sum over k = 1..m is m*p + m(m+1)/2.
    kv_tokens = sum((n - 1) * p + (n - 1) * n // 2 for p, n in zip(prompt_lens, output_lens))
    decode_bytes = steps * shape.weight_bytes + kv_tokens * shape.kv_bytes_per_token
    return WorkloadRoofline(prefill_s=prefill_flops / hw.peak_flops, decode_s=decode_bytes / hw.bandwidth)
