"""Turns a micro-batch plan into tensors and runs it through this stage's modules (the model runner).

Per micro-batch: ``build_stage_inputs`` (numpy, one host-to-device copy), then the decoder layers (replayed from a
CUDA graph of the smallest bucket that holds the micro-batch when graphs are on, else eagerly), then on the last
stage the LM head on the sampled rows and the sampler (with a vocabulary-parallel head, the last stage's half and
its best candidate per row; rank 0 adds its half in ``finish_head``). Nothing here reads the device except
``HostCopy.result()``.
"""

from __future__ import annotations

import torch

from pp_runtime.plan import MicroBatch
from stages import attention
from stages.cuda_graphs import MAX_GRAPH_TOKENS, CudaGraphs, StaticBuffers, graph_buckets, graphs_wanted
from stages.inputs import StageInputs, build_stage_inputs
from stages.kv_cache import KVCache
from stages.sampler import SamplingTensors, sample_tensors
from stages.stage_model import StageModel
from stages.vocab_parallel import HeadSplit, first_stage_tokens, last_stage_part


class HostCopy:
    """A device tensor on its way to the host: ``tensor()`` waits for it.

    On CUDA it goes to a pinned host buffer by a non-blocking copy followed by an event, so rank 0 can plan and
    launch the next micro-batch before reading this one; on the CPU it is ready at once.
    """

    def __init__(self, t: torch.Tensor):
        self._event = None
        if t.device.type == "cuda":
            self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._host.copy_(t, non_blocking=True)
            # Recorded on the tensor's own device's stream (the current device may be another GPU's).
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(t.device))
        else:
            self._host = t

    def tensor(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._host

    def result(self):
        return self.tensor()


class SampledTokens(HostCopy):
    """The sampled token ids ``[S]`` (int64): ``result()`` waits for them and gives a list."""

    def result(self) -> list[int]:
        return self.tensor().tolist()


class HeadMessage(HostCopy):
    """The last stage's half of a vocabulary-parallel head (``HeadSplit.pack``, uint8): ``result()`` waits for it."""


class StageExecutor:
    def __init__(self, model: StageModel, cache: KVCache, *, device: torch.device,
                 backend: str | attention.AttentionBackend = "sdpa",
                 cuda_graphs: bool = False, max_blocks_per_seq: int | None = None,
                 graph_max_tokens: int = MAX_GRAPH_TOKENS, head_split: HeadSplit | None = None):
        """``cuda_graphs`` acts only on CUDA with a capturable backend (triton, flash); it needs
        ``max_blocks_per_seq`` (the graphs' block-table width) and a cache built with a scratch block
        (``extra_blocks=1``); graphs cover micro-batches of up to ``graph_max_tokens`` tokens. ``head_split``: the
        LM head's vocabulary is split between stage 0 and the last stage (``stages/vocab_parallel.py``)."""
        self.model = model
        self.head_split = head_split
        self.cache = cache
        self.device = device
        self.backend = attention.backend(backend) if isinstance(backend, str) else backend
        attention.configure_device(device)
        self.graphs = None
        if graphs_wanted(cuda_graphs, device, self.backend):
            if max_blocks_per_seq is None or cache.scratch_block is None:
                raise ValueError("CUDA graphs need max_blocks_per_seq and a KV cache built with extra_blocks=1")
            hidden = None if model.is_first else model.config.hidden_size
            buckets = graph_buckets(graph_max_tokens)
            buffers = StaticBuffers.allocate(max(b.tokens for b in buckets), seqs=max(b.seqs for b in buckets),
                                             table_width=max_blocks_per_seq, hidden_size=hidden,
                                             dtype=cache.k.dtype, device=device)
            self.graphs = CudaGraphs(self._body, buffers, buckets=buckets, block_size=cache.block_size,
                                     scratch_block=cache.scratch_block, device=device)
            self.graphs.capture()

    def execute(self, mb: MicroBatch, hidden: torch.Tensor | None = None) -> torch.Tensor | HostCopy:
        """Stage 0 takes no ``hidden``; a middle stage returns ``[T, hidden]``; the last stage returns its sampled
        tokens as a ``SampledTokens`` handle, or with a split head its half as a ``HeadMessage``."""
        model = self.model
        inputs = build_stage_inputs(mb, block_size=self.cache.block_size, device=self.device,
                                    token_ids=model.is_first, sample_rows=model.is_last)
        x = inputs.token_ids if model.is_first else hidden  # [T] or [T, hidden]
        h = self.graphs.run(inputs, x) if self.graphs is not None else None
        if h is None:
            h = self._body(inputs, x)  # [T, hidden]
        if not model.is_last:
            return h
        pieces = [p for p in mb.pieces if p.sample]
        st = SamplingTensors.build(pieces, self.device)
        if self.head_split is not None:
            return HeadMessage(last_stage_part(model, h[inputs.sample_rows], st, self.head_split, mb.id))
        logits = model.logits(h[inputs.sample_rows])  # [S, vocab]
        return SampledTokens(sample_tensors(logits, st))

    def finish_head(self, mb: MicroBatch, message: torch.Tensor) -> SampledTokens:
        """Stage 0 with a split head: its half of the LM head on the last stage's ``message`` (uint8, host) and the
        merge, to ``mb``'s sampled tokens."""
        with torch.inference_mode():
            return SampledTokens(first_stage_tokens(self.model, message, mb, self.head_split, self.device))

    def _body(self, inputs: StageInputs, x: torch.Tensor) -> torch.Tensor:
        ctx = attention.prepare(self.backend, self.cache, inputs)
        return self.model.body(x, inputs.positions, ctx)
