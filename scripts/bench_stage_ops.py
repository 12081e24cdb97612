"""Host-side work per micro-batch of a whole stage: torch ops dispatched and wall time of ``StageExecutor.execute``.

    python -m scripts.bench_stage_ops [--root DIR] [--layers 16]

Builds a random Llama with the 1B preset's layer count and head layout shrunk to hidden 128 (op counts do not
depend on widths), one stage, and runs the two 256-token micro-batches of ``scripts.bench_stage_inputs``
through ``StageExecutor.execute`` under ``torch.profiler``. ``--root`` runs another checkout's code (e.g. an
untouched main) with this script, so before/after come from the same machine: only the API both share is used.
On a GPU every dispatched op is at least one kernel launch; this counts them on the CPU, sdpa backend (the
triton kernel under the interpreter takes minutes per micro-batch of this size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args(argv)
    here = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, str(args.root.resolve()))
    import torch
    from transformers import LlamaConfig

    from stages.executor import StageExecutor
    from stages.kv_cache import KVCache
    from stages.stage_model import build_stage_model

    sys.path.insert(0, here)
    from scripts.bench_stage_inputs import BLOCK, plans

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50_304, hidden_size=128, intermediate_size=256, num_hidden_layers=args.layers,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=2048)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp)
        cpu = torch.device("cpu")
        layers = range(args.layers)
        model = build_stage_model(tmp, cfg, layers, num_stages=1, stage=0, device=cpu, dtype=torch.float32)
    cache = KVCache(list(layers), num_blocks=4096, block_size=BLOCK, hf_config=cfg, dtype=torch.float32, device=cpu)
    executor = StageExecutor(model, cache, device=cpu, backend="sdpa")
    print(f"code: {args.root.resolve()}, sdpa attention, {args.layers} layers")
    print("| micro-batch | torch ops per micro-batch | wall ms per execute (best of 3) |")
    print("|---|---|---|")
    for name, mb in plans().items():
        executor.execute(mb)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            executor.execute(mb)
        # Top-level ops only (what Python dispatches), not the ops they call internally.
        ops = sum(1 for e in prof.events() if e.name.startswith("aten::") and (
            e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            executor.execute(mb)
            best = min(best, time.perf_counter() - start)
        print(f"| {name} | {ops} | {best * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
