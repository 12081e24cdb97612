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

from pp_runtime.sim.hardware import GpuSpec, ModelShape
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


class RooflineParts:
    """Per-part roofline prices of micro-batches for one model shape on one GPU (a ``PartSource``)."""

    def __init__(self, shape: ModelShape, gpu: GpuSpec, *, dtype_bytes: int = 2):
        self.shape, self.gpu, self.dtype_bytes = shape, gpu, dtype_bytes
        self.flops_s = gpu.peak_flops(dtype_bytes)
        self.bytes_s = gpu.bytes_s

    def work(self, pieces: Iterable) -> dict[str, Work]:
        """FLOPs and bytes of ``pieces`` per part: ``linear`` and ``attention`` (one layer), ``embed``, ``head``."""
        m, b = self.shape, self.dtype_bytes
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
