"""How many KV-cache blocks a stage holds: bytes per block from a Hugging Face config, blocks for a memory budget.

Pure arithmetic over the model's shape, shared by the job, the simulator and pp-tune; the tensors themselves are
``stages.kv_cache.KVCache``.

The default budget follows vLLM's ``gpu_memory_utilization``: on a GPU, the cache takes what is left of
``cache.gpu_memory_utilization x`` the device's memory once the stage's weights and its activations at the
token budget are counted; on the CPU, a fixed ``CPU_CACHE_GIB``. ``cache.memory_gib`` or ``cache.num_blocks``
override both. The device's total memory is used, not its free memory, so that every rank of a job on identical
GPUs resolves the same block count without talking to the others.
"""

from __future__ import annotations

import torch

from pp_runtime.config import CacheConfig, ConfigError
from pp_runtime.sim.hardware import ModelShape

CPU_CACHE_GIB = 0.5  # the CPU's default cache per stage: about 1k tokens of SmolLM2-135M on 30 layers in fp32
_GIB = 2**30
# Activation rows a token keeps alive at once inside a decoder layer, in units of the hidden size, next to the
# MLP's two intermediate rows and the q/k/v rows (hidden states, residual, normed input, attention output), and
# a factor 2 for the allocator's slack and temporaries: an estimate, +-2x.
_ACT_HIDDEN_ROWS = 4
_ACT_SLACK = 2


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
    return max(1, int(memory_gib * _GIB) // bytes_per_block(max_layers_per_stage, block_size, hf_config, dtype))


def stage_weight_bytes(hf_config, layers: range, *, first: bool, last: bool, dtype: torch.dtype) -> int:
    """Bytes of one stage's weights: its decoder layers, the embeddings on the first stage, the LM head on the last
    (a tied head is a second copy when the two are different stages)."""
    shape = ModelShape.from_hf(hf_config)
    params = len(layers) * shape.layer_params
    params += shape.vocab * shape.hidden * (int(first) + int(last))
    return params * torch.empty((), dtype=dtype).element_size()


def activation_bytes(hf_config, token_budget: int, *, last: bool, dtype: torch.dtype) -> int:
    """Estimated peak activation bytes of one micro-batch of ``token_budget`` tokens on a stage (the last one also
    holds float32 logits for every row it samples, at most one per token)."""
    shape = ModelShape.from_hf(hf_config)
    q_kv = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    row = _ACT_HIDDEN_ROWS * shape.hidden + 2 * shape.intermediate + q_kv
    act = token_budget * row * torch.empty((), dtype=dtype).element_size()
    if last:
        act += token_budget * shape.vocab * 4
    return _ACT_SLACK * act


def cache_size_keys(cache: CacheConfig, device_memory_gib: float | None) -> str:
    """The config keys that change the KV cache's size for ``cache`` on a device of ``device_memory_gib`` (None: the
    CPU), as ``resolve_num_blocks`` reads them, for error messages: ``cache.gpu_memory_utilization`` only on a GPU
    and only while ``cache.num_blocks`` and ``cache.memory_gib`` are null (the CPU ignores it)."""
    if cache.num_blocks is not None:
        return "cache.num_blocks"
    if cache.memory_gib is not None or device_memory_gib is None:
        return "cache.memory_gib or cache.num_blocks"
    return "cache.gpu_memory_utilization, cache.memory_gib or cache.num_blocks"


def resolve_num_blocks(cache: CacheConfig, *, hf_config, layer_ranges: list[range], token_budget: int,
                       dtype: torch.dtype, device_memory_gib: float | None, split_head: bool = False) -> int:
    """KV blocks per stage (every stage the same) for ``cache`` on a device of ``device_memory_gib`` (None: the CPU).

    ``cache.num_blocks`` wins, then ``cache.memory_gib``; else on a GPU each stage gets
    ``gpu_memory_utilization x device_memory_gib`` less its weights and activations, and the stage that fits the
    fewest blocks sets the count (with ``split_head``, stage 0 is priced with a whole LM head and its logits too:
    an upper bound of its half). Raises ConfigError, with the numbers, when weights and activations leave no room.
    """
    if cache.num_blocks is not None:
        return cache.num_blocks
    if cache.memory_gib is not None or device_memory_gib is None:
        gib = cache.memory_gib if cache.memory_gib is not None else CPU_CACHE_GIB
        return num_blocks_for_budget(gib, max_layers_per_stage=max(len(r) for r in layer_ranges),
                                     block_size=cache.block_size, hf_config=hf_config, dtype=dtype)
    usable = cache.gpu_memory_utilization * device_memory_gib * _GIB
    counts = []
    for s, layers in enumerate(layer_ranges):
        last = s == len(layer_ranges) - 1
        head = last or (split_head and s == 0)
        weights = stage_weight_bytes(hf_config, layers, first=s == 0, last=head, dtype=dtype)
        act = activation_bytes(hf_config, token_budget, last=head, dtype=dtype)
        left = usable - weights - act
        if left < bytes_per_block(len(layers), cache.block_size, hf_config, dtype):
            raise ConfigError(
                f"cache.gpu_memory_utilization={cache.gpu_memory_utilization} of {device_memory_gib:.1f} GiB leaves "
                f"no room for a KV cache on stage {s}: its weights take {weights / _GIB:.2f} GiB and activations at "
                f"scheduler.token_budget={token_budget} about {act / _GIB:.2f} GiB; raise "
                f"cache.gpu_memory_utilization, use more pipeline.stages, lower scheduler.token_budget, or set "
                f"cache.memory_gib")
        counts.append(int(left) // bytes_per_block(len(layers), cache.block_size, hf_config, dtype))
    return min(counts)
