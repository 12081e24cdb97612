"""How many KV-cache blocks a stage holds: bytes per block from a Hugging Face config, blocks for a memory budget.

Pure arithmetic over the model's shape, shared by the job, the simulator and pp-tune; the tensors themselves are
``stages.kv_cache.KVCache``.
"""

from __future__ import annotations

import torch


def kv_geometry(hf_config) -> tuple[int, int]:
    """(num_kv_heads, head_dim) of a Hugging Face decoder config."""
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return kv_heads, head_dim


def bytes_per_block(num_layers: int, block_size: int, hf_config, dtype: torch.dtype) -> int:
    kv_heads, head_dim = kv_geometry(hf_config)
    return 2 * num_layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def num_blocks_for_budget(memory_gib: float, *, max_layers_per_stage: int, block_size: int, hf_config,
                          dtype: torch.dtype) -> int:
    """Blocks that fit ``memory_gib`` on the stage with the most layers (every stage gets the same count)."""
    return max(1, int(memory_gib * 2**30) // bytes_per_block(max_layers_per_stage, block_size, hf_config, dtype))
