"""Analytic cost model (source c): a micro-batch's time on a stage from a GPU's peak rates and the model shape.

Each part of a stage is a roofline, ``max(FLOPs / achievable FLOP/s, bytes / achievable bytes/s)``, and the
parts are summed because they run as separate kernels one after the other:

- decoder layer, linear part: ``2 * layer_params`` FLOPs per token; reads the layer's weights once per
  micro-batch (all tokens of a micro-batch share one weight read: they are one packed GEMM);
- decoder layer, attention part: ``4 * num_heads * head_dim`` FLOPs per (query, key) pair (QK^T and PV),
  causal pairs only (a kernel that skips masked tiles: a chunk of n tokens at prefix p has ``n*p + n(n+1)/2``);
  reads the cached keys and values of each decode token's whole context and of each prefill chunk's prefix,
  and writes the new tokens' keys and values;
- embeddings (stage 0): a gather, no FLOPs: each token's row is read and its activation written;
- final norm + LM head (last stage): ``2 * hidden * vocab`` FLOPs per sampled token, the whole vocab x hidden
  weight read once, float32 logits of the sampled tokens written;
- fixed: ``overhead_s`` per micro-batch per stage plus ``layer_overhead_s`` per layer (launches, Python).

Not modelled: activation reads/writes between kernels, norms, rotary embeddings, softmax and sampling costs,
inter-GPU transfers (the simulator's link model adds those), tensor parallelism, wave quantisation and
small-GEMM inefficiency (a 1-token GEMM is priced at full FLOP rate, harmless since it is memory-bound).
Achievable fractions of the peaks are the GPU preset's (``hardware.py``). Dtype: 2 bytes per weight and KV
element (bf16/fp16, tensor cores) or 4 (float32, FP32 cores).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pp_runtime.sim.hardware import GpuSpec, ModelShape, gpu
from pp_runtime.sim.parts import PartTimes, SplitTimeModel, piece_shape


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one part of a micro-batch."""

    flops: float
    bytes: float

    def seconds(self, flops_s: float, bytes_s: float) -> float:
        return max(self.flops / flops_s, self.bytes / bytes_s)

    def bound(self, flops_s: float, bytes_s: float) -> str:
        """'compute' or 'memory': which roof this part hits."""
        return "compute" if self.flops / flops_s >= self.bytes / bytes_s else "memory"


def part_work(shape: ModelShape, pieces: Iterable, *, dtype_bytes: int = 2) -> dict[str, Work]:
    """FLOPs and bytes of a micro-batch's ``pieces`` (``plan.Piece``s or ``(num_tokens, context_len)`` tuples) per
    part: ``linear`` and ``attention`` (one decoder layer each), ``embed``, ``head``. The one place this package
    counts a decoder's FLOPs and bytes (the rules are in the module docstring)."""
    m, b = shape, dtype_bytes
    tokens = pairs = kv_read = samples = 0
    for piece in pieces:
        n, ctx, decode, sampled = piece_shape(piece)
        tokens += n
        pairs += ctx if decode else n * (ctx - n) + n * (n + 1) // 2
        kv_read += ctx if decode else ctx - n
        samples += sampled
    return {
        "linear": Work(2 * m.layer_params * tokens, m.layer_params * b),
        "attention": Work(4 * m.num_heads * m.head_dim * pairs, m.kv_per_token * b * (kv_read + tokens)),
        "embed": Work(0.0, 2 * tokens * m.hidden * b),
        "head": Work(2 * m.hidden * m.vocab * samples,
                     (m.vocab * m.hidden * b + samples * m.vocab * 4) if samples else 0.0),
    }


class RooflineParts:
    """Per-part roofline prices of micro-batches for one model shape on one GPU (a ``PartSource``)."""

    def __init__(self, shape: ModelShape, gpu: GpuSpec, *, dtype_bytes: int = 2):
        self.shape, self.gpu, self.dtype_bytes = shape, gpu, dtype_bytes
        self.flops_s = gpu.peak_flops(dtype_bytes)
        self.bytes_s = gpu.bytes_s

    def __repr__(self) -> str:
        return f"RooflineParts({self.shape.name} on {self.gpu.name}, {self.dtype_bytes}-byte weights and KV)"

    def work(self, pieces: Iterable) -> dict[str, Work]:
        """FLOPs and bytes of ``pieces`` per part: ``linear`` and ``attention`` (one layer), ``embed``, ``head``."""
        return part_work(self.shape, pieces, dtype_bytes=self.dtype_bytes)

    def part_times(self, pieces: Iterable) -> PartTimes:
        """Seconds per part (``PartTimes``): fixed, one decoder layer, embeddings, LM head."""
        w = self.work(pieces)
        f, bw = self.flops_s, self.bytes_s
        layer = w["linear"].seconds(f, bw) + w["attention"].seconds(f, bw) + self.gpu.layer_overhead_s
        return PartTimes(self.gpu.overhead_s, layer, w["embed"].seconds(f, bw), w["head"].seconds(f, bw))

    def bounds(self, pieces: Iterable) -> dict[str, str]:
        """Which roof ('compute' or 'memory') each part of ``pieces`` hits."""
        return {name: w.bound(self.flops_s, self.bytes_s) for name, w in self.work(list(pieces)).items()}


def roofline_model(shape: ModelShape, gpu: GpuSpec, layer_counts: Sequence[int], *,
                   dtype_bytes: int = 2) -> SplitTimeModel:
    """Time model of ``shape`` on one ``gpu`` per stage, stage ``s`` owning ``layer_counts[s]`` layers."""
    return SplitTimeModel(RooflineParts(shape, gpu, dtype_bytes=dtype_bytes), layer_counts)


# --- The bound a whole step or workload cannot beat (scripts/bench_gpu.py, scripts/gpu_steps.py) -------------
# Datasheet peaks, no achievable fractions or overheads: a step takes at least max(FLOPs / peak, bytes /
# bandwidth), FLOPs counted by part_work. Bytes: the layers' and LM head's weights once per step (the embedding
# table is gathered, not read whole), plus every key and value a decode token attends to. The workload's
# roofline is its prefill FLOPs at the peak plus its decode bytes at the bandwidth, with every request decoding
# in one batch: the weights are read once per decode step of the longest output, and each decode token reads its
# context's KV.


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

    def _flops(self, piece: tuple[int, int]) -> int:
        """FLOPs of the whole model on one sampled ``(num_tokens, context_len)`` piece (``part_work``)."""
        w = part_work(self.shape, [piece], dtype_bytes=self.dtype_bytes)
        return int(self.shape.num_layers * (w["linear"].flops + w["attention"].flops) + w["head"].flops)

    def prefill_flops(self, tokens: int) -> int:
        """FLOPs of a causal prefill of ``tokens`` tokens from position 0, sampling its last token."""
        return self._flops((tokens, tokens))

    def decode_flops(self, context: int) -> int:
        """FLOPs of one decode token that attends to ``context`` tokens (itself included), sampled."""
        return self._flops((1, context))


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
