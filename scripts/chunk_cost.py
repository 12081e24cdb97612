"""The cost model's attention term at long prefixes (issue 17): one prefill chunk, measured vs predicted.

    python scripts/chunk_cost.py cpu [--max-prefix 8192] [--chunk 256] [--budget 256] [--repeats 2] [--best-of]
    python scripts/chunk_cost.py gpu [--shape llama-3.1-8b] [--max-prefix 32768] [--chunk 512] [--budget 1024]
    python scripts/chunk_cost.py sim [--shape llama-3.1-8b] [--gpu h100] [--chunk 512] [--budget 1024]

cpu: a random model of SmolLM2-135M's shape (30 layers, hidden 576; ``MODEL_SHAPES['smollm2-135m']``) as one
stage on this machine's CPU (one thread, as a rank runs), the runtime's own StageExecutor and scratch KV cache.
Two cost models are fitted from the start-up profile (``stages.profiler.profile_stage``, the shapes of
``profile_points(--budget)``): one profiled up to the longest context timed here (what a job whose prompt is that
long profiles) and one profiled up to 1024 tokens only (extrapolated); the first profile's rows are also fitted
without the prefill per-context term ``c_ctx`` (the four-term form before it), so the two forms are compared on
the same timings. Then single chunks of ``--chunk`` tokens
at prefixes 0 .. --max-prefix are timed (median of --repeats after a warm-up; with --best-of, the fastest of
--repeats, and the profile taken --repeats times keeping each shape's fastest: on a machine shared with other jobs
the fastest run is the one least disturbed) against both predictions, and the
chunk the time-balanced fill would cut at that prefix (``CostModel.max_chunk`` against the full-budget target)
is timed too: equal-time chunks hold their time if that column stays near the target.

gpu: the same on CUDA (bfloat16, the ``auto`` attention backend: Triton, CUDA graphs as the runtime captures
them unless ``--eager``) for a random model of ``--shape`` (all
its layers by default), with the roofline time model's prediction for the same chunk beside the fitted cost
model's: what ``pp-sim sim.cost_model=roofline sim.gpu=--gpu`` would assume.

sim: the roofline time model of a GPU preset (``sim.cost_model=roofline``) for one stage of a model shape up to
its context (128k for Llama-3.1-8B): a ``--chunk`` chunk's time per prefix, the CostModel the simulated planner
fits to it (as ``pp-sim`` does) and its error, the balanced chunk the fill cuts and its roofline time, and the
budget ``scheduler.token_budget=auto`` picks. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _prefixes(max_prefix: int, chunk: int, first: int) -> list[int]:
    out, p = [0], first
    while p + chunk < max_prefix:
        out.append(p)
        p *= 2
    return [*out, max_prefix - chunk]


def _random_stage(hf_config, dtype):
    """The whole model as one StageModel with random weights (HF's own initialisers)."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages import attention
    from stages.stage_model import StageModel, arch_of

    attention.register()
    arch = arch_of(hf_config)
    torch.manual_seed(0)
    full = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attention.NAME, dtype=dtype)
    layers = list(full.get_submodule(arch.layers))
    rotary = type(full.get_submodule(arch.rotary))(config=hf_config) if arch.rotary else None
    return StageModel(hf_config, layers, list(range(len(layers))), embed=full.get_submodule(arch.embed),
                      rotary=rotary, norm=full.get_submodule(arch.norm), head=full.get_submodule(arch.head)).eval()


def cpu(args) -> None:
    _measure(args, device="cpu", shape="smollm2-135m")


def _measure(args, *, device: str, shape: str) -> None:
    import torch

    from pp_runtime.planner import CostModel
    from pp_runtime.planner.budget import pick_token_budget
    from pp_runtime.planner.fill import full_budget_time
    from pp_runtime.sim.hardware import MODEL_SHAPES
    from scripts.jobs import machine
    from stages import attention
    from stages.cuda_graphs import MAX_GRAPH_TOKENS
    from stages.executor import StageExecutor
    from stages.kv_cache import KVCache
    from stages.profiler import _fake_microbatch, _sync, _wait, profile_stage

    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype, block = (torch.float32, 16) if dev.type == "cpu" else (torch.bfloat16, 16)
    model_shape = MODEL_SHAPES[shape]
    layers = args.layers or model_shape.num_layers
    hf_config = model_shape.to_hf_config(num_layers=layers)
    with dev:
        model = _random_stage(hf_config, dtype)
    graphs = dev.type == "cuda" and not args.eager  # as the runtime runs a stage: micro-batches replayed from graphs
    num_blocks = -(-args.max_prefix // block) + 1
    cache = KVCache(list(range(layers)), num_blocks=num_blocks, block_size=block, hf_config=hf_config, dtype=dtype,
                    device=dev, extra_blocks=1 if graphs else 0)
    backend = attention.choose_backend("auto", dev, block, dtype=dtype)
    ex = StageExecutor(model, cache, device=dev, backend=backend, cuda_graphs=graphs, max_blocks_per_seq=num_blocks,
                       graph_max_tokens=min(args.budget, MAX_GRAPH_TOKENS))
    roof = None
    if dev.type == "cuda":  # what pp-sim sim.cost_model=roofline sim.gpu=--gpu assumes for the same chunk
        from pp_runtime.sim.hardware import gpu
        from pp_runtime.sim.roofline import roofline_model

        sim_model = roofline_model(model_shape, gpu(args.gpu), [layers])
        roof = lambda n, prefix: sim_model.predict([(n, prefix + n)])[0]  # noqa: E731

    def fit(cap: int) -> tuple[CostModel, CostModel, float]:
        """The cost model profiled to ``cap`` tokens, and the same rows fitted without the prefill per-context term
        (the four-term form before it, ``c_ctx`` = 0)."""
        start = time.perf_counter()
        runs = [profile_stage(0, ex, token_budget=args.budget, max_context_len=cap, hidden_size=hf_config.hidden_size,
                              dtype=dtype) for _ in range(args.repeats if args.best_of else 1)]
        rows = [(*r[:-1], min(run[i][-1] for run in runs)) for i, r in enumerate(runs[0])]
        four = CostModel.fit([r[:4] + r[5:] for r in rows])
        return CostModel.fit(rows), four, time.perf_counter() - start

    def measure(n: int, prefix: int) -> float:
        mb = _fake_microbatch([(n, prefix + n)], block)
        _wait(ex.execute(mb, None))  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _wait(ex.execute(mb, None))
            _sync(dev)
            times.append(time.perf_counter() - start)
        return min(times) if args.best_of else statistics.median(times)

    full, four, full_s = fit(args.max_prefix)
    short, _, short_s = fit(min(1024, args.max_prefix))
    target = full_budget_time(full, args.budget, args.chunk)
    where = f"{args.threads} thread(s)" if dev.type == "cpu" else \
        f"{torch.cuda.get_device_name()}, {'CUDA graphs' if graphs else 'eager'}"
    print(f"machine: {machine()}; random {shape} shape ({layers} layers), one stage, {dtype}, "
          f"{where}, {backend} attention; chunk {args.chunk}; profiles of "
          f"profile_points({args.budget}): to {args.max_prefix} tokens ({full_s:.0f}s), to 1024 ({short_s:.0f}s)")
    print(f"cost model (profiled to {args.max_prefix}): {full}")
    print(f"the same rows fitted without c_ctx (four-term form): {four}")
    print(f"cost model (profiled to 1024): {short}")
    knee, info = pick_token_budget(full, chunk_size=args.chunk)
    print(f"scheduler.token_budget=auto would take {knee} (per-token us by budget: {info['per_token_us']})\n")
    roof_col = " roofline ms (err) |" if roof else ""
    print(f"| prefix | chunk measured ms | predicted ms (err) | four-term form (err) | predicted, 1k profile (err) | "
          f"balanced chunk | its measured ms (target {target * 1e3:.1f}) |{roof_col}")
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if roof else ""))
    errs, errs4 = [], []
    for prefix in _prefixes(args.max_prefix, args.chunk, 512):
        t = measure(args.chunk, prefix)
        p_full = full.predict([(args.chunk, prefix + args.chunk)])[0]
        p_four = four.predict([(args.chunk, prefix + args.chunk)])[0]
        p_short = short.predict([(args.chunk, prefix + args.chunk)])[0]
        n_bal = full.max_chunk(0, 0, prefix=prefix, limit_s=target, cap=args.chunk)
        t_bal = measure(n_bal, prefix) if n_bal > 0 else float("nan")
        errs.append(abs(p_full - t) / t)
        errs4.append(abs(p_four - t) / t)
        extra = ""
        if roof:
            r = roof(args.chunk, prefix)
            extra = f" {r * 1e3:.1f} ({(r - t) / t:+.0%}) |"
        print(f"| {prefix} | {t * 1e3:.1f} | {p_full * 1e3:.1f} ({(p_full - t) / t:+.0%}) | "
              f"{p_four * 1e3:.1f} ({(p_four - t) / t:+.0%}) | {p_short * 1e3:.1f} ({(p_short - t) / t:+.0%}) | "
              f"{n_bal} | {t_bal * 1e3:.1f} |{extra}", flush=True)
    print(f"\n|error| of the full-range model: median {statistics.median(errs):.1%}, max {max(errs):.1%}; "
          f"four-term form on the same rows: median {statistics.median(errs4):.1%}, max {max(errs4):.1%}")


def sim(args) -> None:
    from pp_runtime.config import compose_config
    from pp_runtime.planner.budget import budget_bound, describe, resolve_token_budget
    from pp_runtime.planner.fill import full_budget_time
    from pp_runtime.sim import fit_cost_model
    from pp_runtime.sim.sim_job import resolve_sim_job

    cfg = compose_config(["pipeline.stages=1", f"sim.model_shape={args.shape}", f"sim.gpu={args.gpu}",
                          "sim.cost_model=roofline", "workload=synthetic", "workload.num_requests=1",
                          f"scheduler.chunk_size={args.chunk}"])
    job = resolve_sim_job(cfg)
    tm, ctx = job.time_model, job.max_model_len
    planner_model = fit_cost_model(tm, token_budget=budget_bound(cfg.scheduler), max_context_len=ctx)
    _, choice = resolve_token_budget(cfg.scheduler, planner_model)
    budget = args.budget
    target = full_budget_time(planner_model, budget, args.chunk)
    print(f"{args.shape} on one simulated {args.gpu} (roofline), bfloat16, context {ctx}; chunk {args.chunk}; "
          f"{describe(choice)}")
    print(f"planner cost model (fitted to the roofline on profile_points({budget_bound(cfg.scheduler)}) to {ctx}): "
          f"{planner_model}\n")
    print(f"| prefix | chunk {args.chunk} roofline ms | cost model ms (err) | balanced chunk (budget {budget}, "
          f"target {target * 1e3:.2f} ms) | its roofline ms |")
    print("|---:|---:|---:|---:|---:|")
    for prefix in _prefixes(ctx, args.chunk, 4096):
        t = max(tm.predict([(args.chunk, prefix + args.chunk)]))
        p = planner_model.predict_max([(args.chunk, prefix + args.chunk)])
        n_bal = planner_model.max_chunk(0, 0, prefix=prefix, limit_s=target, cap=args.chunk)
        t_bal = max(tm.predict([(n_bal, prefix + n_bal)])) if n_bal else float("nan")
        print(f"| {prefix} | {t * 1e3:.2f} | {p * 1e3:.2f} ({(p - t) / t:+.0%}) | {n_bal} | {t_bal * 1e3:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--max-prefix", type=int, default=8192)
    c.add_argument("--chunk", type=int, default=256)
    c.add_argument("--budget", type=int, default=256, help="token budget the start-up profile covers")
    c.add_argument("--layers", type=int, default=30)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--best-of", action="store_true", help="fastest of --repeats, profile included (loaded machines)")
    g = sub.add_parser("gpu")
    g.add_argument("--shape", default="llama-3.1-8b")
    g.add_argument("--max-prefix", type=int, default=32768)
    g.add_argument("--chunk", type=int, default=512)
    g.add_argument("--budget", type=int, default=1024, help="token budget the start-up profile covers")
    g.add_argument("--layers", type=int, default=None, help="default: all of the shape's layers")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--eager", action="store_true", help="no CUDA graphs (the runtime replays micro-batches of up "
                   "to min(--budget, 2048) tokens from graphs)")
    g.add_argument("--best-of", action="store_true", help="fastest of --repeats, profile included")
    g.add_argument("--gpu", default="h100", help="the simulator's GPU preset to compare with (sim.gpu)")
    s = sub.add_parser("sim")
    s.add_argument("--shape", default="llama-3.1-8b")
    s.add_argument("--gpu", default="h100")
    s.add_argument("--chunk", type=int, default=512)
    s.add_argument("--budget", type=int, default=1024)
    args = parser.parse_args()
    if args.mode == "gpu":
        _measure(args, device="cuda", shape=args.shape)
    else:
        cpu(args) if args.mode == "cpu" else sim(args)


if __name__ == "__main__":
    main()
