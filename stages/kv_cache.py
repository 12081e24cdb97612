"""A stage's paged KV cache: one key and one value tensor per owned layer, in fixed-size blocks.

Layout per layer: ``[num_blocks, block_size, num_kv_heads, head_dim]`` (what flash-attn's paged kernels take).
Which blocks belong to which request is decided on rank 0 (``BlockManager``) and arrives in the plan.
"""

from __future__ import annotations

import torch

from pp_runtime.model.cache_size import kv_geometry


class KVCache:
    def __init__(self, layer_ids: list[int], *, num_blocks: int, block_size: int, hf_config,
                 dtype: torch.dtype, device: torch.device, extra_blocks: int = 0):
        """``extra_blocks=1`` adds a scratch block (id ``num_blocks``, never in a plan) that CUDA graphs' padded
        rows write to; ``num_blocks`` stays the count the block manager hands out."""
        kv_heads, head_dim = kv_geometry(hf_config)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.scratch_block = num_blocks if extra_blocks else None
        self._local = {layer: i for i, layer in enumerate(layer_ids)}
        shape = (len(layer_ids), num_blocks + extra_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Reused gather buffers (keys, values): a fresh multi-MB tensor per gather costs more in page faults
        # than the copy itself (measured 0.9 vs 7 GB/s on the CPU).
        self._scratch = [torch.empty(0, block_size * kv_heads * head_dim, dtype=dtype, device=device)
                         for _ in range(2)]

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value blocks of a global layer index: each ``[num_blocks, block_size, kv_heads, head_dim]``."""
        i = self._local[layer_idx]
        return self.k[i], self.v[i]

    def gather(self, blocks: torch.Tensor, index: torch.Tensor, which: int) -> torch.Tensor:
        """Copy ``blocks[index]`` (one layer's keys, which=0, or values, which=1) into a reused buffer.

        Returns ``[len(index), block_size, kv_heads, head_dim]``, valid until the next gather of the same kind.
        """
        n = index.numel()
        buf = self._scratch[which]
        if buf.shape[0] < n:
            buf = self._scratch[which] = buf.new_empty(max(n, 2 * buf.shape[0]), buf.shape[1])
        out = buf[:n]
        torch.index_select(blocks.view(blocks.shape[0], -1), 0, index, out=out)
        return out.view(n, *blocks.shape[1:])
