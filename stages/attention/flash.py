"""The flash backend: flash-attn 2's ``flash_attn_varlen_func`` reading K/V through a block table.

UNVERIFIED HERE: flash-attn cannot be installed on the machines this was written on (no CUDA toolchain, no
network), so this file has never run. The call follows flash-attn 2's documented interface (>= 2.5):
``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=...,
causal=True, window_size=(left, right), block_table=...)`` with paged ``k``/``v`` of shape
``[num_blocks, page_block_size, Hkv, D]`` (``page_block_size`` a multiple of 256, hence the cache.block_size
rule in ``check_block_size``), ``cu_seqlens_k`` the cumulative context lengths and ``block_table`` ``[B, W]``
int32. q/k/v must be fp16 or bf16 (flash-attn's C++ side raises "FlashAttention only support fp16 and bf16
data type" otherwise), hence the dtype rule in ``check_device``. With ``causal=True`` flash-attn aligns each
sequence's queries to the end of its keys, which is where our new tokens sit (their K/V are written into the
cache before the call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.attention import AttentionBackend
from stages.inputs import StageInputs


def prepare(inputs: StageInputs) -> torch.Tensor:
    """``cu_seqlens_k`` [B+1] int32 from the context lengths (a device op: no host read, capturable)."""
    return F.pad(torch.cumsum(inputs.context_lens, 0, dtype=torch.int32), (1, 0))


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx, *, scale: float,
           window: int | None) -> torch.Tensor:
    """q ``[T, Hq, D]``; returns ``[T, Hq, D]``."""
    from flash_attn import flash_attn_varlen_func

    x: StageInputs = ctx.inputs
    # transformers' window counts the query itself: a query sees window - 1 keys back.
    window_size = (-1, -1) if window is None else (window - 1, 0)
    return flash_attn_varlen_func(q, k_cache, v_cache, x.cu_seqlens_q, ctx.state, x.max_q, x.max_context,
                                  softmax_scale=scale, causal=True, window_size=window_size,
                                  block_table=x.block_tables)


def available() -> bool:
    """Whether flash-attn imports here (it needs CUDA to be of any use)."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def check_device(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return "model.attention=flash needs device=cuda; use model.attention=auto or sdpa on the CPU"
    if dtype not in (torch.float16, torch.bfloat16):
        return (f"model.attention=flash runs fp16/bf16 only (flash-attn rejects {str(dtype).removeprefix('torch.')}); "
                "set dtype=bfloat16, or model.attention=triton or auto")
    if not available():
        return "model.attention=flash needs the flash-attn package (pip install -e .[flash])"
    return None


def check_block_size(block_size: int) -> str | None:
    if block_size % 256:
        return (f"model.attention=flash needs cache.block_size a multiple of 256 (flash-attn's paged KV; got "
                f"{block_size}); set cache.block_size=256, or use model.attention=triton")
    return None


BACKEND = AttentionBackend("flash", prepare, attend, capturable=True, check_device=check_device,
                           check_block_size=check_block_size)
