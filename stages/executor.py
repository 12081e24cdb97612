"""Turns a micro-batch plan into tensors and runs it through this stage's modules (the model runner)."""

from __future__ import annotations

import torch

from pp_runtime import attention
from pp_runtime.kv_cache import KVCache
from pp_runtime.plan import MicroBatch
from pp_runtime.sampler import sample
from stages.stage_model import StageModel


class StageExecutor:
    def __init__(self, model: StageModel, cache: KVCache, *, device: torch.device, backend: str = "sdpa"):
        self.model = model
        self.cache = cache
        self.device = device
        self.backend = backend

    def execute(self, mb: MicroBatch, hidden: torch.Tensor | None = None) -> torch.Tensor | list[int]:
        """Stage 0 takes no ``hidden``; a middle stage returns ``[T, hidden]``; the last stage returns tokens."""
        dev = self.device
        positions = torch.tensor([pos for p in mb.pieces for pos in range(p.start, p.context_len)],
                                 dtype=torch.long, device=dev)  # [T]
        if self.model.is_first:
            inputs = torch.tensor([t for p in mb.pieces for t in p.token_ids], dtype=torch.long, device=dev)
        else:
            inputs = hidden  # [T, hidden]
        meta = attention.build_metadata(mb, self.cache, dev, self.backend)
        sample_rows = None
        if self.model.is_last:
            ends, rows = 0, []
            for p in mb.pieces:
                ends += p.num_tokens
                if p.sample:
                    rows.append(ends - 1)
            sample_rows = torch.tensor(rows, dtype=torch.long, device=dev)
        out = self.model(inputs, positions, meta, sample_rows)
        if not self.model.is_last:
            return out
        return sample(out, [p for p in mb.pieces if p.sample])
