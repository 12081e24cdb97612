"""``python -m scripts.bench_gpu [--presets llama-3.2-1b,llama-3.1-8b] [--out DIR]``: pp-runtime on one GPU against
Hugging Face ``generate`` and against the roofline (issue 8's benchmark). Needs CUDA; nothing is downloaded.

For each architecture preset it builds a random-weight bf16 model on the GPU (``from_config`` under
``torch.device("cuda")``, then ``save_pretrained`` to a temporary folder: random weights time exactly like trained
ones) and runs one fixed offline workload: 256 requests, prompts of uniform 1..1023 random token ids, outputs
uniform 1..255, greedy, EOS ignored (a ``workload=jsonl`` file; the model folder has no tokenizer, so none is
needed). It runs through
- pp-runtime, one stage, in this process (``launch.rank_job.run_job``; tracer off), and
- Hugging Face ``generate`` with static batches of 64, left padding, cuDNN SDPA off (``scripts.hf_baseline``),
and prints output and total tokens/s, the wall time against the workload's roofline (``pp_runtime.sim.roofline``:
prefill FLOPs at the peak plus weights and live KV per decode step at the bandwidth), and the fraction of wall
time the GPU was busy: NVML's utilisation (share of each sample period in which a kernel ran) sampled every
50 ms over the run's last ``duration_s`` seconds (the engine's run; model loading and profiling excluded).
Then per-shape step times through the stage executor (prefill of 2048 tokens; decodes of 8, 64 and 256 tokens
at context 600, each sequence on its own KV blocks), eager and with CUDA graphs, against their step rooflines.
Results also go to ``DIR/bench_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from pp_runtime.sim.hardware import ModelShape
from pp_runtime.sim.roofline import H100_SXM, Costs, Hardware, workload_time_s
from scripts.gpu_busy import GpuBusy, free_cuda_memory
from scripts.gpu_steps import step_times

_LLAMA = dict(num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096,
              rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001)
PRESETS = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, head_dim=64,
                         tie_word_embeddings=True, **_LLAMA),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                         tie_word_embeddings=False, **_LLAMA),
}
NUM_REQUESTS, MAX_PROMPT, MAX_OUTPUT, HF_BATCH = 256, 1023, 255, 64
# One stage's job: whole prompts in one chunk, a 2048-token budget as in the measurements.
PP_OVERRIDES = ["scheduler.token_budget=2048", "scheduler.chunk_size=1024", "tracer.enabled=false",
                "runtime.progress=false"]


def job_overrides(model_dir: Path, requests: Path, *, cache_gib: float) -> list[str]:
    """The overrides both runs share. Every run starts over (runtime.resume=false: earlier outputs in --out are
    moved aside): a benchmark must time the whole workload, and each run's model sits in a new temporary folder,
    so a resumed run would be refused anyway (model.path is part of the run directory's config fingerprint)."""
    return [f"model.path={model_dir}", "workload=jsonl", f"workload.path={requests}", "device=cuda",
            "dtype=bfloat16", f"cache.memory_gib={cache_gib}", "runtime.resume=false"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 2 (with a message) on a machine without CUDA or for a bad argument."""
    parser = argparse.ArgumentParser(prog="bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from {', '.join(PRESETS)}")
    parser.add_argument("--out", default="runs/bench_gpu", help="where runs and bench_gpu.json go")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM.peak_flops / 1e12,
                        help="dense bf16 peak for the roofline (default: H100 SXM, 989)")
    parser.add_argument("--bandwidth-tbs", type=float, default=H100_SXM.bandwidth / 1e12,
                        help="memory bandwidth for the roofline in TB/s (default: H100 SXM, 3.35)")
    parser.add_argument("--cache-gib", type=float, default=32.0, help="pp-runtime's KV cache (cache.memory_gib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload and the weights")
    parser.add_argument("--skip-hf", action="store_true", help="do not run the Hugging Face baseline")
    parser.add_argument("--skip-steps", action="store_true", help="do not time single steps")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the pp-runtime job")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: scripts.bench_gpu needs a CUDA GPU and torch.cuda.is_available() is False here; run it on a "
              "GPU machine (see docs/BENCHMARKS.md, section 'GPU: one H200')", file=sys.stderr)
        return 2
    presets = args.presets.split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        print(f"error: --presets: unknown {', '.join(unknown)}; use {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    hw = Hardware(f"{torch.cuda.get_device_name()} (roofline at {args.peak_tflops:g} TFLOP/s, "
                  f"{args.bandwidth_tbs:g} TB/s)", args.peak_tflops * 1e12, args.bandwidth_tbs * 1e12)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"gpu": hw.name, "torch": torch.__version__, "presets": {}}
    for preset in presets:
        results["presets"][preset] = bench_preset(preset, hw, out / preset, args)
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=2))
    print(f"results in {out / 'bench_gpu.json'}")
    return 0


def write_workload(path: Path, *, vocab: int, seed: int) -> tuple[list[int], list[int]]:
    """The fixed workload as a request file; returns (prompt lengths, output lengths)."""
    rng = random.Random(seed)
    prompts, outputs, lines = [], [], []
    for i in range(NUM_REQUESTS):
        n, m = rng.randint(1, MAX_PROMPT), rng.randint(1, MAX_OUTPUT)
        ids = [rng.randrange(vocab) for _ in range(n)]
        lines.append(json.dumps({"id": f"r{i}", "prompt_token_ids": ids, "max_tokens": m, "ignore_eos": True}))
        prompts.append(n)
        outputs.append(m)
    path.write_text("\n".join(lines) + "\n")
    return prompts, outputs


def bench_preset(preset: str, hw: Hardware, out: Path, args) -> dict:
    from transformers import LlamaConfig

    hf_config = LlamaConfig(**PRESETS[preset])
    costs = Costs(ModelShape.from_hf(hf_config))
    with tempfile.TemporaryDirectory(prefix=f"bench_gpu_{preset}_") as tmp:
        model_dir = _make_model(hf_config, Path(tmp) / "model", seed=args.seed)
        prompts, outputs = write_workload(Path(tmp) / "requests.jsonl", vocab=hf_config.vocab_size, seed=args.seed)
        roof = workload_time_s(costs, hw, prompts, outputs)
        common = job_overrides(model_dir, Path(tmp) / "requests.jsonl", cache_gib=args.cache_gib)
        runs = {"pp-runtime": _run_pipeline(common + PP_OVERRIDES + args.overrides, out / "pp-runtime")}
        if not args.skip_hf:
            runs["hf-generate"] = _run_hf(common, out / "hf-generate")
        steps = [] if args.skip_steps else step_times(common, costs, hw)
    params = costs.weight_bytes / costs.dtype_bytes / 1e9
    print(f"\n{preset}: {params:.2f} B parameters read per step, {hw.name}; workload roofline "
          f"{roof.total_s:.2f} s (prefill {roof.prefill_s:.2f} s + decode {roof.decode_s:.2f} s)")
    print(f"{'run':<12} {'output tok/s':>12} {'total tok/s':>12} {'wall s':>8} {'GPU busy':>9} {'wall/roofline':>13}")
    for name, r in runs.items():
        r["wall_over_roofline"] = r["duration_s"] / roof.total_s
        busy = "n/a" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
        print(f"{name:<12} {r['output_throughput']:>12,.0f} {r['total_token_throughput']:>12,.0f} "
              f"{r['duration_s']:>8.2f} {busy:>9} {r['wall_over_roofline']:>13.1f}")
    if steps:
        print(f"{'step':<22} {'eager ms':>9} {'graphs ms':>9} {'roofline ms':>11} {'eager/roof':>10} "
              f"{'graphs/roof':>11}")
        for s in steps:
            graphs = "-" if s["graphs_s"] is None else f"{s['graphs_s'] * 1e3:.2f}"
            ratio = "-" if s["graphs_s"] is None else f"{s['graphs_s'] / s['roofline_s']:.1f}"
            print(f"{s['step']:<22} {s['eager_s'] * 1e3:>9.2f} {graphs:>9} {s['roofline_s'] * 1e3:>11.3f} "
                  f"{s['eager_s'] / s['roofline_s']:>10.1f} {ratio:>11}")
    return {"roofline_s": roof.total_s, "roofline_prefill_s": roof.prefill_s, "roofline_decode_s": roof.decode_s,
            "runs": runs, "steps": steps}


def _make_model(hf_config, path: Path, *, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    free_cuda_memory()
    return path


def _run_pipeline(overrides: list[str], out: Path) -> dict:
    from launch.rank_job import run_job
    from scripts.hf_baseline import compose_config

    cfg = compose_config(overrides)  # one stage
    cfg.output_dir = str(out)
    with GpuBusy() as busy:
        metrics = run_job(cfg)["metrics"]
        end = time.perf_counter()
    free_cuda_memory()
    return _summary(metrics, busy.fraction(end - metrics["duration_s"], end))


def _run_hf(overrides: list[str], out: Path) -> dict:
    from launch.rank_job import resolve_rank_job
    from scripts.hf_baseline import compose_config, run_baseline

    torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN builds a plan per new shape: unfair to the baseline
    cfg = compose_config(overrides)
    cfg.output_dir = str(out)
    job = resolve_rank_job(cfg)
    with GpuBusy() as busy:
        metrics = run_baseline(job, batch_size=HF_BATCH)
        end = time.perf_counter()
    free_cuda_memory()
    return _summary(metrics, busy.fraction(end - metrics["duration_s"], end))


def _summary(metrics: dict, gpu_busy: float | None) -> dict:
    keys = ("completed", "total_input_tokens", "total_output_tokens", "duration_s", "output_throughput",
            "total_token_throughput")
    return {**{k: metrics[k] for k in keys}, "gpu_busy": gpu_busy}


if __name__ == "__main__":
    sys.exit(main())
