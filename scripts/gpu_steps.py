"""Per-shape step times of one whole-model stage on the GPU, eager and with CUDA graphs (for scripts.bench_gpu).

Shapes: a prefill of 2048 tokens from position 0, and decodes of 8, 64 and 256 tokens at context 600, each
sequence on its own KV blocks (shared blocks would stay in L2 and flatter the decode). A step is
``StageExecutor.execute`` plus reading the sampled tokens back; the median of 20 runs after 3 warm-ups.
"""

from __future__ import annotations

import statistics
import time

import torch

from pp_runtime.sim.roofline import Costs, Hardware, step_time_s
from scripts.gpu_busy import free_cuda_memory

STEP_CONTEXT, DECODE_BATCHES, PREFILL_TOKENS = 600, (8, 64, 256), 2048


def step_times(overrides: list[str], costs: Costs, hw: Hardware) -> list[dict]:
    """Median step times of one stage (the whole model, LM head and sampling included), eager and with graphs."""
    job, model, cache, batches = step_stage(overrides)
    timed = {}
    for graphs in (False, True):
        executor = _executor(job, model, cache, graphs)  # captures its graphs once, here
        timed[graphs] = {name: _time(executor, mb) for name, mb in batches.items()}
        del executor
    rows = []
    for name in batches:
        is_prefill = name.startswith("prefill")
        b = 0 if is_prefill else int(name.split()[1])
        roof = step_time_s(costs, hw, prefill_tokens=PREFILL_TOKENS if is_prefill else 0, decode_batch=b,
                           context=STEP_CONTEXT)
        # Graphs capture decode-only micro-batches; a prefill runs eagerly either way.
        rows.append({"step": name, "eager_s": timed[False][name], "graphs_s": None if is_prefill else timed[True][name],
                     "roofline_s": roof})
    del model, cache
    free_cuda_memory()
    return rows


def step_stage(overrides: list[str]):
    """``(job, model, cache, batches)``: the job of ``overrides`` as one whole-model stage, a KV cache with room
    for every shape, and the shapes (name -> ``MicroBatch``)."""
    from launch.rank_job import resolve_rank_job
    from scripts.hf_baseline import compose_config
    from stages.kv_cache import KVCache
    from stages.stage_model import build_stage_model

    cfg = compose_config(overrides)
    job = resolve_rank_job(cfg)
    bs = cfg.cache.block_size
    per_seq = -(-STEP_CONTEXT // bs)
    num_blocks = max(DECODE_BATCHES) * per_seq + -(-PREFILL_TOKENS // bs)
    layers = job.layer_ranges[0]
    model = build_stage_model(job.model_dir, job.hf_config, layers, num_stages=1, stage=0, device=job.device,
                              dtype=job.dtype)
    cache = KVCache(list(layers), num_blocks=num_blocks, block_size=bs, hf_config=job.hf_config, dtype=job.dtype,
                    device=job.device, extra_blocks=1)
    batches = {f"prefill {PREFILL_TOKENS}": _prefill_batch(bs, first_block=max(DECODE_BATCHES) * per_seq)}
    batches.update({f"decode {b} @ ctx {STEP_CONTEXT}": _decode_batch(b, bs) for b in DECODE_BATCHES})
    return job, model, cache, batches


def run_step(executor, mb) -> None:
    """One step: ``executor.execute(mb)``, reading the sampled tokens back, and the GPU done."""
    out = executor.execute(mb)
    if hasattr(out, "result"):
        out.result()
    torch.cuda.synchronize()


def _executor(job, model, cache, graphs: bool):
    """The stage executor as stages.runtime builds it, with CUDA graphs on or off."""
    from stages.cuda_graphs import MAX_GRAPH_TOKENS
    from stages.executor import StageExecutor

    return StageExecutor(model, cache, device=job.device, backend=job.attention_backend, cuda_graphs=graphs,
                         max_blocks_per_seq=-(-job.max_model_len // cache.block_size),
                         graph_max_tokens=min(max(DECODE_BATCHES), MAX_GRAPH_TOKENS))


def _prefill_batch(block_size: int, *, first_block: int):
    from pp_runtime.plan import MicroBatch, Piece

    table = tuple(range(first_block, first_block + -(-PREFILL_TOKENS // block_size)))
    piece = Piece(seq_id=0, start=0, token_ids=tuple(range(3, 3 + PREFILL_TOKENS)), block_table=table,
                  is_prefill=True, sample=True)
    return MicroBatch(0, (piece,))


def _decode_batch(batch: int, block_size: int):
    """``batch`` decodes at position STEP_CONTEXT - 1, each sequence on its own blocks (no shared cache lines)."""
    from pp_runtime.plan import MicroBatch, Piece

    per_seq = -(-STEP_CONTEXT // block_size)
    pieces = tuple(Piece(seq_id=i, start=STEP_CONTEXT - 1, token_ids=(3 + i,),
                         block_table=tuple(range(i * per_seq, (i + 1) * per_seq)), is_prefill=False, sample=True)
                   for i in range(batch))
    return MicroBatch(0, pieces)


def _time(executor, mb, *, warmup: int = 3, reps: int = 20) -> float:
    """Median wall time of ``executor.execute(mb)`` including reading the sampled tokens back."""
    for _ in range(warmup):
        run_step(executor, mb)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run_step(executor, mb)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
