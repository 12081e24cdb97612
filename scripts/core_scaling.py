"""How much two single-threaded compute processes slow each other down on this machine.

A pipeline of N stages on N cores can only reach efficiency 1 if N busy cores each run as fast as one alone.
On shared or SMT virtual CPUs they do not; this probe measures the ceiling:
``ceiling = aggregate GFLOP/s of N concurrent processes / (N x GFLOP/s of one process alone)``.
"""

from __future__ import annotations

import multiprocessing as mp
import time


def _gflops(rows: int, seconds: float = 3.0) -> float:
    """GFLOP/s of ``[rows, 576] @ [576, 1536]`` matmuls over a set of weights larger than the CPU caches.

    rows=256 is compute-bound (a prefill chunk); rows=4 streams the weights from memory (decode-like).
    """
    import torch

    torch.set_num_threads(1)
    a = torch.randn(rows, 576)
    weights = [torch.randn(576, 1536) for _ in range(32)]  # 113 MB: one SmolLM2-sized projection per layer
    for w in weights:
        a @ w
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for w in weights:
            a @ w
        n += len(weights)
    return n * 2 * rows * 576 * 1536 / (time.perf_counter() - start) / 1e9


def _worker(q, rows):
    q.put(_gflops(rows))


def core_scaling(nproc: int = 2) -> dict:
    """Solo and concurrent GFLOP/s, and the ceiling, for a compute-bound and a memory-bound matmul."""
    ctx = mp.get_context("spawn")
    out = {}
    for kind, rows in (("compute", 256), ("memory", 4)):
        solo = _run(ctx, 1, rows)[0]
        many = _run(ctx, nproc, rows)
        out[kind] = {"solo_gflops": solo, "concurrent_gflops": many, "ceiling": sum(many) / (nproc * solo)}
    return out


def _run(ctx, n: int, rows: int) -> list[float]:
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(q, rows)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def describe(result: dict) -> str:
    return "; ".join(f"{kind}-bound: 1 process {r['solo_gflops']:.1f} GFLOP/s, 2 concurrent "
                     f"{' + '.join(f'{g:.1f}' for g in r['concurrent_gflops'])} -> ceiling {r['ceiling']:.2f}"
                     for kind, r in result.items())


if __name__ == "__main__":
    print(describe(core_scaling()))
