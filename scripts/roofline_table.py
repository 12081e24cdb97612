"""Print the roofline model's per-stage micro-batch times for a model shape on N stages of a GPU preset.

    python -m scripts.roofline_table --model-shape gpt3-175b --gpu a100 --stages 8

Rows are micro-batch shapes (prefill chunks at a prefix, decode batches at a context length, SARATHI-style
hybrids); columns the first, a middle and the last stage's milliseconds and which roof the layers hit.
"""

from __future__ import annotations

import argparse

from pp_runtime.model.partition import partition_layers
from pp_runtime.sim.hardware import GPUS, MODEL_SHAPES
from pp_runtime.sim.roofline import RooflineParts

SHAPES: list[tuple[str, list[tuple[int, int]]]] = [
    ("prefill 2048 (fresh)", [(2048, 2048)]),
    ("prefill chunk 512 @ prefix 0", [(512, 512)]),
    ("prefill chunk 512 @ prefix 1536", [(512, 2048)]),
    ("prefill chunk 256 @ prefix 0", [(256, 256)]),
    ("decode x1 @ ctx 1024", [(1, 1024)]),
    ("decode x32 @ ctx 1024", [(1, 1024)] * 32),
    ("decode x128 @ ctx 1024", [(1, 1024)] * 128),
    ("hybrid: chunk 256 + 32 decodes @ 1024", [(256, 256)] + [(1, 1024)] * 32),
    ("hybrid: chunk 512 + 32 decodes @ 1024", [(512, 512)] + [(1, 1024)] * 32),
]


def table(shape_name: str, gpu_name: str, stages: int, *, dtype_bytes: int = 2) -> str:
    """The table as Markdown."""
    shape, gpu = MODEL_SHAPES[shape_name], GPUS[gpu_name]
    parts = RooflineParts(shape, gpu, dtype_bytes=dtype_bytes)
    counts = [len(r) for r in partition_layers(shape.num_layers, stages)]
    mid = stages // 2
    lines = [f"{shape_name} on {stages} x {gpu.name} (layers {counts}, {dtype_bytes}-byte weights; achievable "
             f"{parts.flops_s / 1e12:.0f} TFLOP/s, {parts.bytes_s / 1e12:.2f} TB/s)", "",
             f"| micro-batch | stage 0 ms | stage {mid} ms | stage {stages - 1} ms | linear | attention |",
             "|---|---|---|---|---|---|"]
    for label, pieces in SHAPES:
        times = parts.part_times(pieces).stage_times(counts)
        bound = parts.bounds(pieces)
        lines.append(f"| {label} | {times[0] * 1e3:.2f} | {times[mid] * 1e3:.2f} | {times[-1] * 1e3:.2f} | "
                     f"{bound['linear']} | {bound['attention']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-shape", default="gpt3-175b", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--gpu", default="a100", choices=sorted(GPUS))
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--dtype-bytes", type=int, default=2, choices=(2, 4))
    args = parser.parse_args(argv)
    print(table(args.model_shape, args.gpu, args.stages, dtype_bytes=args.dtype_bytes))


if __name__ == "__main__":
    main()
