"""Paged attention for token-packed micro-batches, plugged into Hugging Face models as an attention backend.

``register()`` adds the ``pp_paged`` implementation to transformers' ``AttentionInterface``, so the stock model
classes run unchanged: each decoder layer hands us its projected (and rotary-embedded) query, key and value for
the packed tokens of one micro-batch, plus an ``AttentionContext`` passed through the layer's ``**kwargs`` as
``pp_attn``. We write the new keys/values into the stage's paged cache (one ``index_copy_`` per tensor) and
hand the query to one backend, which reads the micro-batch's ``StageInputs`` (never the plan):

- ``triton`` (``triton_paged.py``): our kernel, one launch per layer, K/V read through the block table.
- ``flash`` (``flash.py``): flash-attn 2's varlen kernel with a block table (needs cache.block_size % 256 == 0).
- ``sdpa`` (``sdpa.py``): torch SDPA, the CPU path and the reference the others are tested against.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from stages.inputs import StageInputs
from stages.kv_cache import KVCache

NAME = "pp_paged"
BACKENDS = ("auto", "triton", "flash", "sdpa")


@dataclass(frozen=True)
class AttentionContext:
    """What every layer of a stage needs for one micro-batch: the cache, the inputs and the chosen backend."""

    cache: KVCache
    inputs: StageInputs
    # (query [T, Hq, D], k_cache, v_cache, ctx, *, scale, window) -> [T, Hq, D]
    attend: Callable[..., torch.Tensor]
    state: Any = None  # what the backend derived once per micro-batch (sdpa: decode tables and masks)


def prepare(backend: str, cache: KVCache, inputs: StageInputs) -> AttentionContext:
    """The context a stage's layers share for one micro-batch (runs inside a CUDA graph capture too)."""
    if backend == "sdpa":
        from stages.attention import sdpa

        return AttentionContext(cache, inputs, sdpa.attend, sdpa.prepare(inputs))
    if backend == "flash":
        from stages.attention import flash

        return AttentionContext(cache, inputs, flash.attend, flash.prepare(inputs))
    if backend == "triton":
        return AttentionContext(cache, inputs, _triton)
    raise ValueError(f"unknown attention backend {backend!r}; use one of {', '.join(BACKENDS[1:])}")


def _triton(q, k_cache, v_cache, ctx: AttentionContext, *, scale: float, window: int | None) -> torch.Tensor:
    from stages.attention.triton_paged import paged_attention as kernel

    x = ctx.inputs
    return kernel(q, k_cache, v_cache, cu_seqlens_q=x.cu_seqlens_q, context_lens=x.context_lens,
                  block_tables=x.block_tables, max_q=x.max_q, scale=scale, window=window)


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``pp_paged`` attention function: query ``[1, Hq, T, D]``, key/value ``[1, Hkv, T, D]``.

    Returns ``([1, T, Hq, D], None)`` like transformers' own backends.
    """
    ctx: AttentionContext = kwargs["pp_attn"]
    k_cache, v_cache = ctx.cache.layer(module.layer_idx)  # [blocks, block_size, Hkv, D]
    _, hkv, _, d = key.shape
    slots = ctx.inputs.slot_mapping
    k_cache.view(-1, hkv, d).index_copy_(0, slots, key[0].transpose(0, 1).to(k_cache.dtype))
    v_cache.view(-1, hkv, d).index_copy_(0, slots, value[0].transpose(0, 1).to(v_cache.dtype))
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    scale = scaling if scaling is not None else d**-0.5
    out = ctx.attend(q, k_cache, v_cache, ctx, scale=scale, window=kwargs.get("sliding_window"))
    return out.unsqueeze(0), None


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _triton_block_size_ok(block_size: int) -> bool:
    return block_size >= 16 and block_size & (block_size - 1) == 0


def choose_backend(requested: str, device: torch.device, block_size: int) -> str:
    """Resolve ``model.attention`` for ``device``; raises ValueError naming what to change.

    auto: flash on CUDA when flash-attn imports and block_size % 256 == 0, else triton on CUDA (sdpa when the
    block size does not suit the kernel), sdpa on the CPU. triton on the CPU only with TRITON_INTERPRET=1.
    """
    cuda = device.type == "cuda"
    if requested == "sdpa":
        return "sdpa"
    if requested == "auto":
        if not cuda:
            return "sdpa"
        if flash_available() and block_size % 256 == 0:
            return "flash"
        return "triton" if _triton_block_size_ok(block_size) else "sdpa"
    if requested == "flash":
        if not cuda:
            raise ValueError("model.attention=flash needs device=cuda; use model.attention=auto or sdpa on the CPU")
        if not (flash_available() and block_size % 256 == 0):
            raise ValueError("model.attention=flash needs the flash-attn package (pip install -e .[flash]) and "
                             f"cache.block_size a multiple of 256 (got {block_size})")
        return "flash"
    if requested == "triton":
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("model.attention=triton on the CPU runs only under Triton's interpreter (slow, for "
                             "tests): set TRITON_INTERPRET=1 in the environment, or use model.attention=sdpa")
        if not _triton_block_size_ok(block_size):
            raise ValueError(f"model.attention=triton needs cache.block_size a power of two >= 16 (got "
                             f"{block_size}); set cache.block_size=16, or use model.attention=sdpa")
        return "triton"
    raise ValueError(f"model.attention={requested!r}: use one of {', '.join(BACKENDS)}")


def configure_device(device: torch.device) -> None:
    """Turn off cuDNN's SDPA in this stage process: it builds a new plan for every new shape (3.1 ms of host time
    per call measured on an H100). Global rather than an ``sdpa_kernel`` context per call: the process runs only
    this stage's model, and a context manager per layer call would add the host cost we are removing."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, paged_attention)
