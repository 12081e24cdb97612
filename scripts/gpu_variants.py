"""``python -m scripts.gpu_variants [--micro-batches 2000] [--seed 0]``: how many kernels Triton would compile for
the paged-attention kernels over random micro-batches, with and without the kernel's do_not_specialize marks.

No GPU needed: each launch's arguments (as ``stages.attention.triton_paged`` builds them from ``build_stage_inputs``
output, one packed buffer per micro-batch) go through the binder Triton's launcher uses for an sm_90 target, which
returns the specialisation its compile cache is keyed on (integers equal to 1 or divisible by 16, pointers aligned
to 16 bytes, and the constexprs). Prints, per kernel, the constexpr configurations seen and the compiled variants
they would need. Run on the CPU, the kernels must be importable: set TRITON_INTERPRET=1 (as the tests do).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import torch


def random_launches(count: int, *, seed: int, device: torch.device) -> Iterator[list[tuple]]:
    """The launches of ``count`` random micro-batches as a stage builds them: 1-17 pieces, half of the
    micro-batches decode-only, contexts up to ~2000 tokens, windows None, 1 or 5, bf16, 16-token blocks."""
    from pp_runtime.plan import MicroBatch, Piece
    from stages.attention import triton_paged
    from stages.inputs import build_stage_inputs
    from stages.kv_cache import KVCache

    rng = random.Random(seed)
    cfg = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=64)
    cache = KVCache([0], num_blocks=300, block_size=16, hf_config=cfg, dtype=torch.bfloat16, device=device)
    k, v = cache.layer(0)
    for i in range(count):
        decode_only = rng.random() < 0.5
        pieces = []
        for s in range(rng.randint(1, 17)):
            n = 1 if decode_only else rng.choice([1, 1, 2, 7, 16, 33])
            start = rng.randint(0, rng.choice([15, 200, 2000]))
            table = tuple(range(-(-(start + n) // 16)))
            pieces.append(Piece(seq_id=s, start=start, token_ids=(1,) * n, block_table=table, is_prefill=n > 1,
                                sample=rng.random() < 0.5))
        x = build_stage_inputs(MicroBatch(i, tuple(pieces)), block_size=16, device=device,
                               token_ids=rng.random() < 0.5, sample_rows=rng.random() < 0.5)
        q = torch.empty(x.num_tokens, 4, 16, dtype=torch.bfloat16, device=device)
        yield triton_paged._launches(q, k, v, torch.empty_like(q), cu_seqlens_q=x.cu_seqlens_q,
                                     context_lens=x.context_lens, block_tables=x.block_tables, max_q=x.max_q,
                                     scale=0.25, window=rng.choice([None, 1, 5]), max_context=x.max_context,
                                     num_splits=None)


def kernels(*, marked: bool) -> dict:
    """JIT functions of the two kernels (``main``, ``combine``), with the module's marks or with none."""
    from triton.runtime.jit import JITFunction

    from stages.attention import triton_paged as tp

    if not marked:
        return {"main": JITFunction(tp._kernel_fn), "combine": JITFunction(tp._combine_fn)}
    return {"main": JITFunction(tp._kernel_fn, do_not_specialize=tp._INTS, do_not_specialize_on_alignment=tp._POINTERS),
            "combine": JITFunction(tp._combine_fn, do_not_specialize=tp._COMBINE_INTS,
                                   do_not_specialize_on_alignment=tp._COMBINE_POINTERS)}


def specialisations(jit: dict, calls) -> dict:
    """``{(kernel, constexprs): {runtime specialisation}}``: each set's size is the compiles that configuration
    costs (1 when nothing but the constexprs is specialised)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from stages.attention import triton_paged

    backend = make_backend(GPUTarget("cuda", 90, 32))
    binders = {k: create_function_from_signature(f.signature, f.params, backend) for k, f in jit.items()}
    seen: dict = {}
    for launches in calls:
        for kernel, _, args, meta in launches:
            name = "main" if kernel is triton_paged._KERNEL else "combine"
            _, spec, _ = binders[name](*args, **{k: v for k, v in meta.items() if k != "num_warps"})
            const = tuple(x for x in spec if x[0] == "constexpr")
            seen.setdefault((name, const), set()).add(tuple(x for x in spec if x[0] != "constexpr"))
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_variants", description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batches", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    calls = list(random_launches(args.micro_batches, seed=args.seed, device=torch.device("cpu")))
    for marked in (False, True):
        seen = specialisations(kernels(marked=marked), calls)
        for name in ("main", "combine"):
            configs = [v for (k, _), v in seen.items() if k == name]
            print(f"{'marked' if marked else 'unmarked':<9} {name:<8} {len(configs):>3} constexpr configurations, "
                  f"{sum(map(len, configs)):>4} compiled variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
