"""How long the start-up profile of the cost model takes, by the longest context it covers.

    python -m scripts.profile_startup [--contexts 512,2048,8192] [--token-budget 1024] [--stages 2]

Builds stage 0 of SmolLM2-135M split evenly over ``--stages`` stages (its layers and the embeddings, float32,
sdpa, one thread, its share of a split LM head left out: about what a CPU run's rank 0 profiles, while the other
stages profile theirs in parallel on their own cores) and times ``stages.profiler.profile_stage`` once per
context: the shapes a job whose longest request (prompt + max_tokens) is that long profiles at start-up, at
``scheduler.token_budget=auto``'s bound of 1024 tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--token-budget", type=int, default=1024)
    ap.add_argument("--stages", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoConfig

    from pp_runtime.model.default_model import default_model_dir
    from scripts.jobs import machine
    from stages.executor import StageExecutor
    from stages.kv_cache import KVCache
    from stages.profiler import describe_profile, profile_shapes, profile_stage
    from stages.stage_model import build_stage_model

    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]
    folder = default_model_dir()
    hf = AutoConfig.from_pretrained(folder)
    layers = range(hf.num_hidden_layers // args.stages)  # an even split; the job's may differ by a layer or two
    cpu = torch.device("cpu")
    model = build_stage_model(str(folder), hf, layers, num_stages=args.stages, stage=0, device=cpu,
                              dtype=torch.float32)
    block = 16
    num_blocks = -(-max(contexts) // block)
    cache = KVCache(list(layers), num_blocks=num_blocks, block_size=block, hf_config=hf, dtype=torch.float32,
                    device=cpu)
    executor = StageExecutor(model, cache, device=cpu, backend="sdpa", max_blocks_per_seq=num_blocks)
    print(f"machine: {machine()}; stage 0 of {args.stages} (layers {layers.start}-{layers.stop - 1} + embeddings), "
          f"float32, sdpa, 1 thread, token budget {args.token_budget}")
    print("| longest context | shapes profiled | profile s |")
    print("|---|---|---|")
    for ctx in contexts:
        shapes = profile_shapes(args.token_budget, max_context_len=ctx, cache_tokens=num_blocks * block)
        start = time.perf_counter()
        profile_stage(0, executor, token_budget=args.token_budget, max_context_len=ctx, hidden_size=hf.hidden_size,
                      dtype=torch.float32)
        print(f"| {ctx} | {describe_profile(shapes)} | {time.perf_counter() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
