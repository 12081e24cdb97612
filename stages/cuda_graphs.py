"""CUDA graphs of a stage's decoder layers, at bucketed sizes, for decode-only and mixed micro-batches alike.

A micro-batch is padded up to the smallest captured bucket that holds it and replayed from static input buffers;
one that fits no bucket runs eagerly. Two kinds of bucket (``Bucket``):

- decode: ``r`` one-token sequences, captured with max_q = 1 (the kernel's decode tile, split-KV for long
  contexts). Padding rows are one-token sequences of their own.
- mixed: a token count ``T`` and a sequence count ``B`` (chunks and decodes together, as SARATHI forms them),
  captured with max_q = T. The padding tokens form one extra sequence and the sequences after it are empty.

Padding writes its keys/values into a scratch block the block manager never hands out (the cache is built with one
extra block, ``KVCache.scratch_block``) and attends only to it; its outputs are dropped. Attention runs inside the
graph: a capturable backend's launch grid depends on tensor shapes and host ints fixed per bucket, never on the
data (the triton kernel's grid is (T // BLOCK_Q + B, Hkv, splits)), so no piecewise capture around attention is
needed. Only the layers are captured: the LM head runs eagerly on the sampled rows (its [rows, vocab] output would
cost a graph-pool buffer per size). Buckets, padding and buffer filling are plain functions, tested on the CPU;
capture and replay need CUDA.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stages import attention
from stages.inputs import StageInputs

# Largest captured micro-batch (tokens): the runtime captures up to min(scheduler.token_budget, this); for
# token_budget=auto, min(planner.budget.AUTO_MAX_TOKEN_BUDGET, this).
MAX_GRAPH_TOKENS = 2048
# Largest captured decode batch: more sequences than this rarely decode together, and every bucket costs capture
# time and pool memory.
MAX_DECODE_ROWS = 256
# Most sequences in a mixed bucket (one of them the padding sequence).
MAX_GRAPH_SEQS = 256
MIN_MIXED_TOKENS = 16


@dataclass(frozen=True, order=True)
class Bucket:
    """A captured shape: ``tokens`` packed rows in ``seqs`` sequences; ``decode``: one token per sequence."""

    tokens: int
    seqs: int
    decode: bool


def graphs_wanted(enabled: bool, device: torch.device, backend: str | attention.AttentionBackend) -> bool:
    """Whether a stage captures graphs: runtime.cuda_graphs on, CUDA, and a capturable attention backend."""
    if not enabled or device.type != "cuda":
        return False
    return (attention.backend(backend) if isinstance(backend, str) else backend).capturable


def bucket_sizes(max_tokens: int, *, cap: int = MAX_DECODE_ROWS) -> list[int]:
    """Decode buckets: 1, 2, 4, 8, then multiples of 8, up to the first of them that holds min(max_tokens, cap)."""
    limit = max(1, min(max_tokens, cap))
    sizes = [1, 2, 4, 8, *range(16, limit + 8, 8)]
    return [s for s in sizes if s < limit] + [next(s for s in sizes if s >= limit)]


def _powers_up_to(first: int, limit: int) -> list[int]:
    """first, 2 * first, ... below ``limit``, then ``limit`` itself."""
    sizes, s = [], first
    while s < limit:
        sizes.append(s)
        s *= 2
    return [*sizes, limit]


def graph_buckets(max_tokens: int, *, decode_cap: int = MAX_DECODE_ROWS, seq_cap: int = MAX_GRAPH_SEQS,
                  mixed: bool = True) -> list[Bucket]:
    """Every bucket a stage captures for micro-batches of up to ``max_tokens`` tokens: the decode buckets
    (``bucket_sizes``), and with ``mixed`` token counts 16, 32, ... up to max_tokens, each with sequence counts
    2, 4, ... up to min(tokens, seq_cap) (padding may cost up to twice the tokens or sequences of the micro-batch).
    """
    buckets = [Bucket(r, r, True) for r in bucket_sizes(max_tokens, cap=decode_cap)]
    if mixed and max_tokens >= 2:
        for t in _powers_up_to(MIN_MIXED_TOKENS, max_tokens) if max_tokens > MIN_MIXED_TOKENS else [max_tokens]:
            buckets += [Bucket(t, b, False) for b in _powers_up_to(2, max(2, min(t, seq_cap)))]
    return buckets


def pick_bucket(num_tokens: int, sizes: list[int]) -> int | None:
    """The smallest captured size holding ``num_tokens`` rows, or None (run eagerly)."""
    i = bisect.bisect_left(sizes, num_tokens)
    return sizes[i] if i < len(sizes) else None


def pick_graph_bucket(num_tokens: int, num_seqs: int, max_q: int, buckets: list[Bucket]) -> Bucket | None:
    """The bucket a micro-batch replays in, or None (run eagerly): decode-only micro-batches take the smallest
    decode bucket with room; others the smallest mixed token count with room, then the smallest sequence count
    holding their sequences plus one for the padding tokens (none needed when the tokens fit exactly)."""
    if max_q <= 1:
        fits = [b for b in buckets if b.decode and b.tokens >= num_tokens]
        return min(fits) if fits else None
    tokens = [b.tokens for b in buckets if not b.decode and b.tokens >= num_tokens]
    if not tokens:
        return None
    t = min(tokens)
    need = num_seqs + (t > num_tokens)
    fits = [b for b in buckets if not b.decode and b.tokens == t and b.seqs >= need]
    return min(fits) if fits else None


@dataclass(frozen=True)
class StaticBuffers:
    """Graph inputs at the largest bucket; a bucket reads the first ``tokens`` / ``seqs`` rows of each."""

    x: torch.Tensor  # [N] int64 token ids (stage 0) or [N, hidden] activations
    positions: torch.Tensor  # [N] int64
    slot_mapping: torch.Tensor  # [N] int64
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    context_lens: torch.Tensor  # [S] int32
    block_tables: torch.Tensor  # [S, W] int32, W = blocks of the longest sequence the job allows
    arange: torch.Tensor  # [S + 1] int32: 0, 1, ..., S (the decode buckets' cu_seqlens_q)

    @staticmethod
    def allocate(rows: int, *, table_width: int, hidden_size: int | None, dtype: torch.dtype,
                 device: torch.device, seqs: int | None = None) -> StaticBuffers:
        """``rows`` tokens, ``seqs`` sequences (default: ``rows``); ``hidden_size`` None: stage 0 (token ids in),
        else activations of that width."""
        seqs = rows if seqs is None else seqs
        x = (torch.zeros(rows, dtype=torch.int64, device=device) if hidden_size is None
             else torch.zeros(rows, hidden_size, dtype=dtype, device=device))
        return StaticBuffers(
            x=x, positions=torch.zeros(rows, dtype=torch.int64, device=device),
            slot_mapping=torch.zeros(rows, dtype=torch.int64, device=device),
            cu_seqlens_q=torch.arange(seqs + 1, dtype=torch.int32, device=device),
            context_lens=torch.ones(seqs, dtype=torch.int32, device=device),
            block_tables=torch.zeros(seqs, table_width, dtype=torch.int32, device=device),
            arange=torch.arange(seqs + 1, dtype=torch.int32, device=device))

    def view(self, rows: int, *, block_size: int, seqs: int | None = None) -> StageInputs:
        """The ``StageInputs`` a graph is captured with (its tensors alias these buffers): a decode bucket of
        ``rows`` one-token sequences (``seqs`` None), or a mixed bucket of ``rows`` tokens in ``seqs`` sequences."""
        decode = seqs is None
        seqs = rows if decode else seqs
        return StageInputs(num_tokens=rows, positions=self.positions[:rows], slot_mapping=self.slot_mapping[:rows],
                           cu_seqlens_q=self.cu_seqlens_q[:seqs + 1], context_lens=self.context_lens[:seqs],
                           block_tables=self.block_tables[:seqs], max_q=1 if decode else rows,
                           max_context=self.block_tables.shape[1] * block_size)

    def fill(self, inputs: StageInputs | None, x: torch.Tensor | None, *, rows: int, scratch_block: int,
             block_size: int, seqs: int | None = None) -> None:
        """Copy a micro-batch into the first rows and pad up to the bucket (inputs None: all padding, for
        capture). Decode bucket (``seqs`` None): padding rows are one-token sequences on the scratch block. Mixed
        bucket: the padding tokens are one more sequence on the scratch block (its context capped at the table's
        reach: its rows may see fewer keys than queries, harmless as they are dropped), the sequences after it
        are empty. Device-to-device copies only: no host read."""
        n = 0 if inputs is None else inputs.num_tokens
        s = 0 if inputs is None else inputs.cu_seqlens_q.shape[0] - 1
        if n:
            self.x[:n].copy_(x)
            self.positions[:n].copy_(inputs.positions)
            self.slot_mapping[:n].copy_(inputs.slot_mapping)
        if s:
            w = inputs.block_tables.shape[1]
            self.cu_seqlens_q[:s + 1].copy_(inputs.cu_seqlens_q)
            self.context_lens[:s].copy_(inputs.context_lens)
            self.block_tables[:s, :w].copy_(inputs.block_tables)
            self.block_tables[:s, w:].fill_(scratch_block)
        self.x[n:rows].zero_()
        self.positions[n:rows].zero_()
        self.slot_mapping[n:rows].fill_(scratch_block * block_size)
        if seqs is None:
            self.cu_seqlens_q[n + 1:rows + 1].copy_(self.arange[n + 1:rows + 1])
            self.context_lens[n:rows].fill_(1)
            self.block_tables[n:rows].fill_(scratch_block)
            return
        self.cu_seqlens_q[s + 1:seqs + 1].fill_(rows)
        pad = rows > n
        if pad:
            self.context_lens[s].fill_(min(rows - n, self.block_tables.shape[1] * block_size))
        self.context_lens[s + pad:seqs].zero_()
        self.block_tables[s:seqs].fill_(scratch_block)


class CudaGraphs:
    """One captured graph per bucket over ``layers(inputs, x) -> [rows, hidden]``, sharing one memory pool."""

    def __init__(self, layers: Callable[[StageInputs, torch.Tensor], torch.Tensor], buffers: StaticBuffers, *,
                 buckets: list[Bucket], block_size: int, scratch_block: int, device: torch.device | None = None):
        """``device``: the stage's GPU; capture, replay, streams and the pool name it explicitly."""
        self.layers = layers
        self.buffers = buffers
        self.buckets = buckets
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.graphs: dict[Bucket, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def view(self, bucket: Bucket) -> StageInputs:
        return self.buffers.view(bucket.tokens, block_size=self.block_size,
                                 seqs=None if bucket.decode else bucket.seqs)

    def fill(self, bucket: Bucket, inputs: StageInputs | None, x: torch.Tensor | None) -> None:
        self.buffers.fill(inputs, x, rows=bucket.tokens, scratch_block=self.scratch_block, block_size=self.block_size,
                          seqs=None if bucket.decode else bucket.seqs)

    def capture(self) -> None:
        """Capture every bucket, largest first so that smaller graphs reuse its pool memory."""
        with _on(self.device):
            self._capture()

    def _capture(self) -> None:
        dev = self.device
        pool = torch.cuda.graph_pool_handle()
        capture_stream = torch.cuda.Stream(device=dev)
        buf = self.buffers
        for bucket in sorted(self.buckets, reverse=True):
            self.fill(bucket, None, None)
            inputs = self.view(bucket)
            rows = bucket.tokens
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
            self.graphs[bucket] = (graph, out)

    def run(self, inputs: StageInputs, x: torch.Tensor) -> torch.Tensor | None:
        """``[T, hidden]`` from a replay when ``inputs`` fits a bucket, else None."""
        if inputs.block_tables.shape[1] > self.buffers.block_tables.shape[1]:
            return None
        bucket = pick_graph_bucket(inputs.num_tokens, inputs.cu_seqlens_q.shape[0] - 1, inputs.max_q, self.buckets)
        if bucket is None:
            return None
        self.fill(bucket, inputs, x)
        graph, out = self.graphs[bucket]
        with _on(self.device):
            graph.replay()
        # A copy: the next replay overwrites `out` while this micro-batch may still be on its way down the pipe.
        return out[:inputs.num_tokens].clone()


def _on(device: torch.device | None):
    """``device`` as the current CUDA device for the block (a no-op off CUDA: the CPU tests' emulated replay)."""
    return torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
