"""Take a per-layer profile (``pp_runtime.sim.layer_profile``) of a model shape on this machine's device.

    python -m scripts.profile_layers --model-shape llama-3.2-1b --device cuda --out llama1b_h100.json
    python -m scripts.profile_layers --out smollm2_cpu.json          # the default model's shape, on the CPU

Builds, with random weights of the target shape, the four stages that price a micro-batch part by part: an
empty stage, one decoder layer, the embeddings alone, and the final norm + LM head alone. They are the runtime's
own ``StageModel`` / ``StageExecutor`` (Hugging Face module classes, the paged attention backend, a scratch KV
cache), timed by ``stages.profiler.profile_stage`` on the shapes of ``cost_model.profile_points``; each shape's
median over ``--repeats`` runs is kept. Load the file with ``sim.cost_model=layer_profile
sim.layer_profile_path=FILE``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pp_runtime.planner.cost_model import profile_points
from pp_runtime.sim.layer_profile import PARTS, LayerProfile, shape_meta
from stages import attention
from stages.executor import StageExecutor
from stages.kv_cache import KVCache
from stages.profiler import profile_stage
from stages.stage_model import StageModel, arch_of


def build_parts(hf_config, *, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, StageModel]:
    """The four stages (``PARTS``) of one-layer ``hf_config``, on ``device`` with random weights."""
    from transformers import AutoModelForCausalLM

    attention.register()
    arch = arch_of(hf_config)
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attention.NAME, dtype=dtype)
    names = {"layer": f"{arch.layers}.0", "embed": arch.embed, "norm": arch.norm, "head": arch.head}
    if arch.pos_embed:
        names["pos_embed"] = arch.pos_embed
    mods = {key: full.get_submodule(name).to_empty(device=device) for key, name in names.items()}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for module in mods.values():
        for name, p in module.named_parameters():
            # Norm weights 1, biases 0, matrices ~N(0, 0.02) as in the models' own initialisers.
            if p.dim() > 1:
                value = torch.randn(p.shape, generator=gen) * 0.02
            else:
                value = torch.zeros(p.shape) if "bias" in name else torch.ones(p.shape)
            with torch.no_grad():
                p.copy_(value.to(dtype))
    rotary = None
    if arch.rotary:
        with torch.device(device):
            rotary = type(full.get_submodule(arch.rotary))(config=hf_config)

    def stage(layers=(), **kw) -> StageModel:
        return StageModel(hf_config, list(layers), list(range(len(layers))), rotary=rotary, **kw).eval()

    return {"fixed": stage(), "layer": stage([mods["layer"]]),
            "embed": stage(embed=mods["embed"], pos_embed=mods.get("pos_embed")),
            "head": stage(norm=mods["norm"], head=mods["head"])}


def take_profile(hf_config, *, device: torch.device, dtype: torch.dtype, token_budget: int, max_context_len: int,
                 block_size: int = 16, repeats: int = 3) -> LayerProfile:
    """Time every part on every shape of ``profile_points(token_budget)``; fit and return the profile."""
    parts = build_parts(hf_config, device=device, dtype=dtype)
    num_blocks = -(-max_context_len // block_size) + 1  # every piece reuses the same scratch blocks
    cache = KVCache([0], num_blocks=num_blocks, block_size=block_size, hf_config=hf_config, dtype=dtype, device=device)
    backend = attention.choose_backend("auto", device, block_size, dtype=dtype)
    shapes = profile_points(token_budget, max_context_len=min(max_context_len, num_blocks * block_size))
    seconds: dict[str, list[float]] = {}
    for part, model in parts.items():
        executor = StageExecutor(model, cache, device=device, backend=backend)
        runs = [profile_stage(0, executor, token_budget=token_budget, max_context_len=max_context_len,
                              hidden_size=hf_config.hidden_size, dtype=dtype) for _ in range(repeats)]
        seconds[part] = [statistics.median(r[i][-1] for r in runs) for i in range(len(shapes))]
        work = [row[1:4] for row in runs[0]]
    rows: dict[str, list[list[float]]] = {}
    for part in PARTS:
        base = [0.0] * len(shapes) if part == "fixed" else seconds["fixed"]
        # A part's time is its stage's minus the empty stage's (never below 1 ns: fitting weighs by 1/time).
        rows[part] = [[n, len(shape), attn, dec, max(t - b, 1e-9)]
                      for shape, (n, attn, dec), t, b in zip(shapes, work, seconds[part], base)]
    meta = {**shape_meta(hf_config), "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "backend": backend, "token_budget": token_budget,
            "threads": torch.get_num_threads(), "repeats": repeats}
    return LayerProfile.fit(rows, meta)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoConfig

    from pp_runtime.sim.hardware import MODEL_SHAPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-shape", choices=sorted(MODEL_SHAPES), help="preset shape (default: --model-dir)")
    parser.add_argument("--model-dir", help="Hugging Face model folder whose config to use (default: SmolLM2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16 (auto: bf16 on CUDA)")
    parser.add_argument("--token-budget", type=int, default=256, help="largest micro-batch to time, tokens")
    parser.add_argument("--max-context-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="profile JSON to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.model_shape:
        hf_config = MODEL_SHAPES[args.model_shape].to_hf_config(num_layers=1,
                                                                max_position_embeddings=args.max_context_len)
    else:
        from pp_runtime.model.default_model import default_model_dir

        hf_config = AutoConfig.from_pretrained(args.model_dir or str(default_model_dir()))
        hf_config.num_hidden_layers = 1
    prof = take_profile(hf_config, device=device, dtype=dtype, token_budget=args.token_budget,
                        max_context_len=args.max_context_len, repeats=args.repeats)
    prof.meta["shape"] = args.model_shape or args.model_dir or "default"
    prof.to_json(args.out)
    print(f"wrote {args.out} ({prof.meta['device_name']}, {prof.meta['dtype']}); seconds per micro-batch part:")
    for part in PARTS:
        c0, c_tok, c_attn, c_dec = prof.coefs[part]
        per = "sampled token" if part == "head" else "token"
        print(f"  {part:6} {c0 * 1e3:8.3f} ms + {c_tok * 1e6:8.2f} us/{per} + {c_attn * 1e9:8.3f} ns/prefill pair "
              f"+ {c_dec * 1e9:8.2f} ns/decode ctx token")


if __name__ == "__main__":
    main()
