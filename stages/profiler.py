"""Time synthetic micro-batches on this stage's real modules, for the planner's cost model.

Every rank times the same shapes (``cost_model.profile_points``) at start-up, in parallel; rank 0 gathers the
rows and fits one set of coefficients per stage. Timings use the stage's own KV cache (the blocks are
scratch space before any request arrives) and the device's own clock (synchronised on CUDA).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner.cost_model import profile_points, work
from stages.executor import HostCopy, StageExecutor


def stage_code_digest() -> str:
    """A hash of the device plane's source (every ``stages/**/*.py``): what a stage does per micro-batch, so a cached
    cost model timed by other stage code is profiled again (part of ``cost_cache.cost_model_key``)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def profile_shapes(token_budget: int, *, max_context_len: int, cache_tokens: int) -> list[list[tuple[int, int]]]:
    """The shapes ``profile_stage`` times: ``profile_points`` up to ``token_budget`` tokens and contexts up to
    ``max_context_len``, capped by the ``cache_tokens`` the stage's KV cache holds."""
    return profile_points(token_budget, max_context_len=min(max_context_len, cache_tokens))


def describe_profile(shapes: list[list[tuple[int, int]]]) -> str:
    """What a start-up profile runs, for the log line before it: the shape count, the most tokens of a micro-batch
    and the longest context (its cost grows with that context: chunks of up to the budget over a prefix that long)."""
    tokens = max(sum(n for n, _ in shape) for shape in shapes)
    context = max(ctx for shape in shapes for _, ctx in shape)
    return (f"{len(shapes)} micro-batch shapes (each run twice: warm-up, then timed) of up to {tokens} tokens, "
            f"contexts up to {context} tokens")


def profile_stage(stage: int, executor: StageExecutor, *, token_budget: int, max_context_len: int,
                  hidden_size: int, dtype: torch.dtype) -> list[tuple[int, int, int, int, int, float]]:
    """Rows ``(stage, num_tokens, attn_work, decode_ctx, prefill_ctx, seconds)`` (``cost_model.work``), one per shape.

    Every shape runs once untimed before any is timed: first-call allocations, kernel selection and Triton's
    compiles (one per tile configuration, and the shapes pick different tiles) stay out of the timings."""
    cache = executor.cache
    shapes = profile_shapes(token_budget, max_context_len=max_context_len,
                            cache_tokens=cache.num_blocks * cache.block_size)
    batches = [_fake_microbatch(shape, cache.block_size) for shape in shapes]

    def hidden(mb: MicroBatch) -> torch.Tensor | None:  # [T, hidden] activations for a stage past the first
        if executor.model.is_first:
            return None
        return torch.randn(mb.num_tokens, hidden_size, dtype=dtype, device=executor.device)

    # Stage 0 with a split LM head also runs its half of the head on the sampled rows of each micro-batch (in the
    # run, when it reads the micro-batch's tokens): it is part of the stage's time per micro-batch.
    head = executor.model.is_first and executor.head_split is not None

    def run(mb: MicroBatch, x: torch.Tensor | None, normed: torch.Tensor | None) -> None:
        _wait(executor.execute(mb, x))
        if normed is not None:
            executor.model.head_logits(normed).max(dim=-1)

    def rows_in(mb: MicroBatch) -> torch.Tensor | None:  # [S, hidden] normed rows for stage 0's half of the head
        if not head:
            return None
        return torch.randn(mb.num_samples, hidden_size, dtype=dtype, device=executor.device)

    for mb in batches:  # warm-up, untimed
        run(mb, hidden(mb), rows_in(mb))
    rows = []
    for shape, mb in zip(shapes, batches):
        x, normed = hidden(mb), rows_in(mb)
        _sync(executor.device)
        start = time.perf_counter()
        run(mb, x, normed)
        _sync(executor.device)
        rows.append((stage, *work(shape), time.perf_counter() - start))
    return rows


def _fake_microbatch(shape: list[tuple[int, int]], block_size: int) -> MicroBatch:
    pieces = []
    for seq_id, (n, ctx) in enumerate(shape):
        table = tuple(range(-(-ctx // block_size)))  # every piece may reuse the same scratch blocks
        pieces.append(Piece(seq_id=seq_id, start=ctx - n, token_ids=(3,) * n, block_table=table,
                            is_prefill=n > 1, sample=True))
    return MicroBatch(-1, tuple(pieces))


def _wait(out) -> None:
    # The last stage returns its sampled tokens (or its half of a split head) as a handle: reading them is part of
    # its step time.
    if isinstance(out, HostCopy):
        out.result()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
