"""CUDA graphs of a stage's decoder layers for decode-only micro-batches, at bucketed sizes (executor only).

A micro-batch whose pieces are all single tokens (decodes) is padded up to the next captured size and replayed
from static input buffers; anything else runs eagerly. Padded rows are one-token "sequences" that write their
keys/values into a scratch block the block manager never hands out (the cache is built with one extra block,
``KVCache.scratch_block``) and attend only to it; their outputs are dropped. Only the layers are captured: the
LM head runs eagerly on the sampled rows (its [rows, vocab] output would cost a graph-pool buffer per size).
Buckets, padding and buffer filling are plain functions, tested on the CPU; capture and replay need CUDA.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stages import attention
from stages.inputs import StageInputs

# Largest captured decode batch by default: more sequences than this rarely decode together, and every bucket
# costs capture time and pool memory.
MAX_GRAPH_TOKENS = 256


def graphs_wanted(enabled: bool, device: torch.device, backend: str | attention.AttentionBackend) -> bool:
    """Whether a stage captures graphs: runtime.cuda_graphs on, CUDA, and a capturable attention backend."""
    if not enabled or device.type != "cuda":
        return False
    return (attention.backend(backend) if isinstance(backend, str) else backend).capturable


def bucket_sizes(max_tokens: int, *, cap: int = MAX_GRAPH_TOKENS) -> list[int]:
    """1, 2, 4, 8, then multiples of 8, up to the first of them that holds min(max_tokens, cap) rows."""
    limit = max(1, min(max_tokens, cap))
    sizes = [1, 2, 4, 8, *range(16, limit + 8, 8)]
    return [s for s in sizes if s < limit] + [next(s for s in sizes if s >= limit)]


def pick_bucket(num_tokens: int, sizes: list[int]) -> int | None:
    """The smallest captured size holding ``num_tokens`` rows, or None (run eagerly)."""
    i = bisect.bisect_left(sizes, num_tokens)
    return sizes[i] if i < len(sizes) else None


@dataclass(frozen=True)
class StaticBuffers:
    """Graph inputs at the largest bucket; bucket ``rows`` reads the first ``rows`` rows of each."""

    x: torch.Tensor  # [N] int64 token ids (stage 0) or [N, hidden] activations
    positions: torch.Tensor  # [N] int64
    slot_mapping: torch.Tensor  # [N] int64
    cu_seqlens_q: torch.Tensor  # [N + 1] int32: 0, 1, ..., N (one token per sequence, padding included)
    context_lens: torch.Tensor  # [N] int32
    block_tables: torch.Tensor  # [N, W] int32, W = blocks of the longest sequence the job allows

    @staticmethod
    def allocate(rows: int, *, table_width: int, hidden_size: int | None, dtype: torch.dtype,
                 device: torch.device) -> StaticBuffers:
        """``hidden_size`` None: stage 0 (token ids in); else activations of that width."""
        x = (torch.zeros(rows, dtype=torch.int64, device=device) if hidden_size is None
             else torch.zeros(rows, hidden_size, dtype=dtype, device=device))
        return StaticBuffers(
            x=x, positions=torch.zeros(rows, dtype=torch.int64, device=device),
            slot_mapping=torch.zeros(rows, dtype=torch.int64, device=device),
            cu_seqlens_q=torch.arange(rows + 1, dtype=torch.int32, device=device),
            context_lens=torch.ones(rows, dtype=torch.int32, device=device),
            block_tables=torch.zeros(rows, table_width, dtype=torch.int32, device=device))

    def view(self, rows: int, *, block_size: int) -> StageInputs:
        """The ``StageInputs`` a graph of ``rows`` rows is captured with (its tensors alias these buffers)."""
        return StageInputs(num_tokens=rows, positions=self.positions[:rows], slot_mapping=self.slot_mapping[:rows],
                           cu_seqlens_q=self.cu_seqlens_q[:rows + 1], context_lens=self.context_lens[:rows],
                           block_tables=self.block_tables[:rows], max_q=1,
                           max_context=self.block_tables.shape[1] * block_size)

    def fill(self, inputs: StageInputs | None, x: torch.Tensor | None, *, rows: int, scratch_block: int,
             block_size: int) -> None:
        """Copy a decode-only micro-batch into the first rows and make rows up to ``rows`` padding (inputs None:
        all padding, for capture). Device-to-device copies only: no host read."""
        n = 0 if inputs is None else inputs.num_tokens
        if n:
            w = inputs.block_tables.shape[1]
            self.x[:n].copy_(x)
            self.positions[:n].copy_(inputs.positions)
            self.slot_mapping[:n].copy_(inputs.slot_mapping)
            self.context_lens[:n].copy_(inputs.context_lens)
            self.block_tables[:n, :w].copy_(inputs.block_tables)
            self.block_tables[:n, w:].fill_(scratch_block)
        self.x[n:rows].zero_()
        self.positions[n:rows].zero_()
        self.slot_mapping[n:rows].fill_(scratch_block * block_size)
        self.context_lens[n:rows].fill_(1)
        self.block_tables[n:rows].fill_(scratch_block)


class CudaGraphs:
    """One captured graph per bucket over ``layers(inputs, x) -> [rows, hidden]``, sharing one memory pool."""

    def __init__(self, layers: Callable[[StageInputs, torch.Tensor], torch.Tensor], buffers: StaticBuffers, *,
                 sizes: list[int], block_size: int, scratch_block: int, device: torch.device | None = None):
        """``device``: the stage's GPU; capture, replay, streams and the pool name it explicitly."""
        self.layers = layers
        self.device = device
        self.buffers = buffers
        self.sizes = sizes
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def capture(self) -> None:
        """Capture every bucket, largest first so that smaller graphs reuse its pool memory."""
        with _on(self.device):
            self._capture()

    def _capture(self) -> None:
        dev = self.device
        pool = torch.cuda.graph_pool_handle()
        capture_stream = torch.cuda.Stream(device=dev)
        buf = self.buffers
        for rows in sorted(self.sizes, reverse=True):
            buf.fill(None, None, rows=rows, scratch_block=self.scratch_block, block_size=self.block_size)
            inputs = buf.view(rows, block_size=self.block_size)
            # Warm up on a side stream (as torch.cuda.graph's docs ask): compiles kernels, settles allocations.
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.layers(inputs, buf.x[:rows])
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=capture_stream):
                out = self.layers(inputs, buf.x[:rows])  # [rows, hidden]
            self.graphs[rows] = (graph, out)

    def run(self, inputs: StageInputs, x: torch.Tensor) -> torch.Tensor | None:
        """``[T, hidden]`` from a replay when ``inputs`` is decode-only and fits a bucket, else None."""
        if inputs.max_q != 1 or inputs.block_tables.shape[1] > self.buffers.block_tables.shape[1]:
            return None
        rows = pick_bucket(inputs.num_tokens, self.sizes)
        if rows is None:
            return None
        self.buffers.fill(inputs, x, rows=rows, scratch_block=self.scratch_block, block_size=self.block_size)
        graph, out = self.graphs[rows]
        with _on(self.device):
            graph.replay()
        # A copy: the next replay overwrites `out` while this micro-batch may still be on its way down the pipe.
        return out[:inputs.num_tokens].clone()


def _on(device: torch.device | None):
    """``device`` as the current CUDA device for the block (a no-op off CUDA: the CPU tests' emulated replay)."""
    return torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
