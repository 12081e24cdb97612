"""Paged attention for token-packed micro-batches, plugged into Hugging Face models as an attention backend.

``register()`` adds the ``pp_paged`` implementation to transformers' ``AttentionInterface``, so the stock model
classes run unchanged: each decoder layer hands us its projected (and rotary-embedded) query, key and value for
the packed tokens of one micro-batch, plus an ``AttentionContext`` passed through the layer's ``**kwargs`` as
``pp_attn``. We write the new keys/values into the stage's paged cache (one ``index_copy_`` per tensor) and
hand the query to one backend, which reads the micro-batch's ``StageInputs`` (never the plan).

A backend is an ``AttentionBackend`` record defined in its own file, with its own per-micro-batch metadata:

- ``triton`` (``triton_paged.py``): our kernel, one launch per layer, K/V read through the block table.
- ``flash`` (``flash.py``): flash-attn 2's varlen kernel with a block table (block_size % 256 == 0, fp16/bf16).
- ``sdpa`` (``sdpa.py``): torch SDPA, the CPU path and the reference the others are tested against.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from stages.inputs import StageInputs
from stages.kv_cache import KVCache

NAME = "pp_paged"
BACKENDS = ("auto", "triton", "flash", "sdpa")
_AUTO_ORDER = ("flash", "triton")  # what auto tries on CUDA, fastest first; sdpa when neither fits
_MODULES = {"triton": "stages.attention.triton_paged", "flash": "stages.attention.flash",
            "sdpa": "stages.attention.sdpa"}


@dataclass(frozen=True)
class AttentionBackend:
    """One attention backend: what a stage needs to know about it, in place of comparisons of its name.

    ``check_device(device, dtype)`` and ``check_block_size(block_size)`` return None when the backend can run
    there, else a message naming the config key to change (``choose_backend`` raises it, or skips the backend
    for ``auto``). ``capturable``: no host reads and a launch grid fixed by tensor shapes, so a micro-batch's
    attention can run inside a CUDA graph.
    """

    name: str
    # (inputs) -> the backend's metadata for one micro-batch, shared by every layer (device ops only when
    # capturable: it runs inside a graph capture too).
    prepare: Callable[[StageInputs], Any]
    # (query [T, Hq, D], k_cache, v_cache, ctx, *, scale, window) -> [T, Hq, D]
    attend: Callable[..., torch.Tensor]
    capturable: bool
    check_device: Callable[[torch.device, torch.dtype], str | None]
    check_block_size: Callable[[int], str | None]

    def __repr__(self) -> str:
        return f"AttentionBackend({self.name})"


def backend(name: str) -> AttentionBackend:
    """The record of backend ``name`` (imported on first use: the triton one imports triton)."""
    if name not in _MODULES:
        raise ValueError(f"model.attention={name!r}: use one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise ValueError(f"model.attention={name} cannot be imported here ({exc}); use model.attention=sdpa") from None
    return module.BACKEND


@dataclass(frozen=True)
class AttentionContext:
    """What every layer of a stage needs for one micro-batch: the cache, the inputs and the chosen backend."""

    cache: KVCache
    inputs: StageInputs
    backend: AttentionBackend
    state: Any = None  # backend.prepare(inputs): what the backend derived once per micro-batch


def prepare(which: str | AttentionBackend, cache: KVCache, inputs: StageInputs) -> AttentionContext:
    """The context a stage's layers share for one micro-batch (runs inside a CUDA graph capture too)."""
    record = backend(which) if isinstance(which, str) else which
    return AttentionContext(cache, inputs, record, record.prepare(inputs))


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
    out = ctx.backend.attend(q, k_cache, v_cache, ctx, scale=scale, window=kwargs.get("sliding_window"))
    return out.unsqueeze(0), None


def choose_backend(requested: str, device: torch.device, block_size: int, *, dtype: torch.dtype) -> str:
    """Resolve ``model.attention`` for ``device``, ``cache.block_size`` and the model's ``dtype`` to a backend
    name; raises ValueError naming what to change.

    auto: on CUDA the first of flash, triton whose checks pass (flash needs flash-attn, block_size % 256 == 0 and
    fp16/bf16: an fp32 job gets triton), else sdpa; sdpa on the CPU. triton on the CPU only with TRITON_INTERPRET=1.
    """
    if requested == "auto":
        if device.type != "cuda":
            return "sdpa"
        for name in _AUTO_ORDER:
            try:
                record = backend(name)
            except ValueError:
                continue
            if record.check_device(device, dtype) is None and record.check_block_size(block_size) is None:
                return name
        return "sdpa"
    record = backend(requested)
    problem = record.check_device(device, dtype) or record.check_block_size(block_size)
    if problem:
        raise ValueError(problem)
    return record.name


def configure_device(device: torch.device) -> None:
    """Turn off cuDNN's SDPA in this stage process: it builds a new plan for every new shape (3.1 ms of host time
    per call measured on an H100). Global rather than an ``sdpa_kernel`` context per call: the process runs only
    this stage's model, and a context manager per layer call would add the host cost we are removing."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, paged_attention)
