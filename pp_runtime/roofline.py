"""Roofline times: how fast a decoder could run a step or a workload on a GPU at its datasheet peaks.

This is the bound issue 8's benchmark compares against (``scripts/bench_gpu.py``); the simulator's analytic
cost model (``pp_runtime/sim/roofline.py``) prices micro-batches per stage with achievable fractions instead.
Both take the model shape and the GPU presets from ``pp_runtime/sim/hardware.py``.

Counted for decoder-only models, no sliding window:
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

from pp_runtime.sim.hardware import GpuSpec, ModelShape, gpu


@dataclass(frozen=True)
class Hardware:
    """The two peaks a roofline needs."""

    name: str
    peak_flops: float  # dense FLOP/s at the model's dtype
    bandwidth: float  # memory bytes/s

    @classmethod
    def from_gpu(cls, spec: GpuSpec) -> Hardware:
        """Datasheet peaks of a preset (dense bf16 tensor-core FLOP/s, HBM bandwidth), no efficiency factors."""
        return cls(spec.name, peak_flops=spec.bf16_flops, bandwidth=spec.hbm_bytes_s)


H100_SXM = Hardware.from_gpu(gpu("h100"))


@dataclass(frozen=True)
class Costs:
    """FLOPs and bytes of a model shape at a storage width (2: bf16/fp16 weights and KV cache)."""

    shape: ModelShape
    dtype_bytes: int = 2

    @property
    def weight_bytes(self) -> int:
        """Bytes read by one forward step: every layer's weights and the LM head (norms are negligible)."""
        s = self.shape
        return (s.num_layers * s.layer_params + s.vocab * s.hidden) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values of one token over all layers."""
        return self.shape.num_layers * self.shape.kv_per_token * self.dtype_bytes

    def _attn_flops(self, pairs: int) -> int:
        s = self.shape
        return 4 * s.num_layers * s.num_heads * s.head_dim * pairs

    def _dense_flops(self, tokens: int, sampled: int) -> int:
        s = self.shape
        return 2 * s.num_layers * s.layer_params * tokens + 2 * s.vocab * s.hidden * sampled

    def prefill_flops(self, tokens: int) -> int:
        """FLOPs of a causal prefill of ``tokens`` tokens from position 0, sampling its last token."""
        return self._dense_flops(tokens, 1) + self._attn_flops(tokens * (tokens + 1) // 2)

    def decode_flops(self, context: int) -> int:
        """FLOPs of one decode token that attends to ``context`` tokens (itself included), sampled."""
        return self._dense_flops(1, 1) + self._attn_flops(context)


def step_time_s(costs: Costs, hw: Hardware, *, prefill_tokens: int = 0, decode_batch: int = 0,
                context: int = 0) -> float:
    """Roofline of one step: a prefill of ``prefill_tokens`` from position 0 and/or ``decode_batch`` decode
    tokens each attending to ``context`` tokens; ``max(FLOPs / peak, bytes / bandwidth)``."""
    flops = decode_batch * costs.decode_flops(context)
    if prefill_tokens:
        flops += costs.prefill_flops(prefill_tokens)
    nbytes = costs.weight_bytes + decode_batch * context * costs.kv_bytes_per_token
    return max(flops / hw.peak_flops, nbytes / hw.bandwidth)


@dataclass(frozen=True)
class WorkloadRoofline:
    prefill_s: float  # every prompt's prefill FLOPs at the peak
    decode_s: float  # weights once per decode step plus every decode token's KV reads, at the bandwidth

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def workload_time_s(costs: Costs, hw: Hardware, prompt_lens: list[int], output_lens: list[int]) -> WorkloadRoofline:
    """Roofline of an offline workload: request i has ``prompt_lens[i]`` prompt tokens and ``output_lens[i]``
    output tokens (the first comes from the prefill, the other ``output_lens[i] - 1`` from decode steps)."""
    prefill_flops = sum(costs.prefill_flops(p) for p in prompt_lens)
    steps = max((n - 1 for n in output_lens), default=0)
    # Decode k (1-based) of a p-token prompt attends to p + k tokens: sum over k = 1..m is m*p + m(m+1)/2.
    kv_tokens = sum((n - 1) * p + (n - 1) * n // 2 for p, n in zip(prompt_lens, output_lens))
    decode_bytes = steps * costs.weight_bytes + kv_tokens * costs.kv_bytes_per_token
    return WorkloadRoofline(prefill_s=prefill_flops / hw.peak_flops, decode_s=decode_bytes / hw.bandwidth)
