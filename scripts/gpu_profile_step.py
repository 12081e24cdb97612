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

    from scripts.bench_gpu import PRESETS, _make_model, job_overrides
    from scripts.gpu_steps import _executor, run_step, step_stage

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _make_model(LlamaConfig(**PRESETS[args.preset]), Path(tmp) / "model", seed=0)
        (Path(tmp) / "r.jsonl").write_text('{"id": "r0", "prompt_token_ids": [3, 4], "max_tokens": 1}\n')
        job, model, cache, batches = step_stage(job_overrides(model_dir, Path(tmp) / "r.jsonl", cache_gib=8.0))
        executor = _executor(job, model, cache, graphs=False)
        print(f"{args.preset}, one stage, bf16, {executor.backend.name} attention, eager, "
              f"{torch.cuda.get_device_name()}; {args.reps} steps per shape")
        for name, mb in batches.items():
            for _ in range(3):
                run_step(executor, mb)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                start = time.perf_counter()
                for _ in range(args.reps):
                    run_step(executor, mb)
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
