"""``python -m scripts.gpu_profile_step [--preset llama-3.2-1b] [--reps 10]``: where a step's GPU time goes.

Builds the random-weight bf16 model of a ``scripts.bench_gpu`` preset as one stage (the whole model), runs the
``scripts.gpu_steps`` shapes (a 2048-token prefill; decodes of 8, 64 and 256 tokens at context 600) eagerly under
``torch.profiler`` and prints, per shape, the step's wall time, the summed GPU kernel time (the GPU's busy share
of the step) and the kernels that took most of it. Needs CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: scripts.gpu_profile_step needs a CUDA GPU", file=sys.stderr)
        return 2
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig

    from launch.rank_job import resolve_rank_job
    from scripts.bench_gpu import PRESETS, _make_model, job_overrides
    from scripts.gpu_steps import DECODE_BATCHES, PREFILL_TOKENS, STEP_CONTEXT, _decode_batch, _executor, _prefill_batch
    from scripts.hf_baseline import compose_config
    from stages.kv_cache import KVCache
    from stages.stage_model import build_stage_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _make_model(LlamaConfig(**PRESETS[args.preset]), Path(tmp) / "model", seed=0)
        (Path(tmp) / "r.jsonl").write_text('{"id": "r0", "prompt_token_ids": [3, 4], "max_tokens": 1}\n')
        cfg = compose_config(job_overrides(model_dir, Path(tmp) / "r.jsonl", cache_gib=8.0))
        job = resolve_rank_job(cfg)
        bs = cfg.cache.block_size
        per_seq = -(-STEP_CONTEXT // bs)
        layers = job.layer_ranges[0]
        model = build_stage_model(job.model_dir, job.hf_config, layers, num_stages=1, stage=0, device=job.device,
                                  dtype=job.dtype)
        cache = KVCache(list(layers), num_blocks=max(DECODE_BATCHES) * per_seq + -(-PREFILL_TOKENS // bs),
                        block_size=bs, hf_config=job.hf_config, dtype=job.dtype, device=job.device, extra_blocks=1)
        executor = _executor(job, model, cache, graphs=False)
        batches = {f"prefill {PREFILL_TOKENS}": _prefill_batch(bs, first_block=max(DECODE_BATCHES) * per_seq)}
        batches.update({f"decode {b} @ ctx {STEP_CONTEXT}": _decode_batch(b, bs) for b in DECODE_BATCHES})
        print(f"{args.preset}, one stage, bf16, {executor.backend.name} attention, eager, "
              f"{torch.cuda.get_device_name()}; {args.reps} steps per shape")
        for name, mb in batches.items():
            def step():
                out = executor.execute(mb)
                if hasattr(out, "result"):
                    out.result()
                torch.cuda.synchronize()
            for _ in range(3):
                step()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                start = time.perf_counter()
                for _ in range(args.reps):
                    step()
                wall = (time.perf_counter() - start) / args.reps
            kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
            gpu = sum(e.self_device_time_total for e in kernels) / args.reps / 1e3  # ms per step
            print(f"\n{name}: wall {wall * 1e3:.2f} ms/step (under the profiler), GPU kernels {gpu:.2f} ms/step "
                  f"({gpu / (wall * 1e3):.0%} busy), {sum(e.count for e in kernels) // args.reps} launches/step")
            for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:args.top]:
                ms = e.self_device_time_total / args.reps / 1e3
                print(f"  {ms:7.3f} ms  {e.count // args.reps:4d}x  {e.key[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
