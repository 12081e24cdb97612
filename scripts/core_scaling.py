"""How much two single-threaded compute processes slow each other down on this machine.

A pipeline of N stages on N cores can only reach efficiency 1 if N busy cores each run as fast as one alone.
On shared or SMT virtual CPUs they do not; this probe measures the ceiling:
``ceiling = aggregate GFLOP/s of N concurrent processes / (N x GFLOP/s of one process alone)``.
"""

from __future__ import annotations

import multiprocessing as mp
import time


def _gflops(seconds: float = 3.0) -> float:
    import torch

    torch.set_num_threads(1)
    a, w = torch.randn(256, 576), torch.randn(576, 1536)  # one SmolLM2-sized MLP projection
    for _ in range(10):
        a @ w
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ w
        n += 1
    return n * 2 * 256 * 576 * 1536 / (time.perf_counter() - start) / 1e9


def _worker(q):
    q.put(_gflops())


def core_scaling(nproc: int = 2) -> dict:
    ctx = mp.get_context("spawn")
    solo = _run(ctx, 1)[0]
    many = _run(ctx, nproc)
    return {"solo_gflops": solo, "concurrent_gflops": many, "ceiling": sum(many) / (nproc * solo)}


def _run(ctx, n: int) -> list[float]:
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(q,)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return out


if __name__ == "__main__":
    r = core_scaling()
    print(f"1 process: {r['solo_gflops']:.1f} GFLOP/s; 2 concurrent: "
          f"{', '.join(f'{g:.1f}' for g in r['concurrent_gflops'])} GFLOP/s; ceiling {r['ceiling']:.2f}")
