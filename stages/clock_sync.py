"""Clock offsets between ranks, so that every stage's events can be laid on rank 0's clock.

Each round, rank r notes its time t0, pings rank 0, rank 0 replies with its own time t, and rank r notes t1 on
receipt. Rank 0 read t somewhere between t0 and t1, so ``t - (t0 + t1) / 2`` is the offset to within half the
round trip; the round with the least round trip gives the tightest bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist


def estimate_clock_offset(rank: int, *, rounds: int = 50, group=None,
                          clock: Callable[[], int] = time.monotonic_ns) -> tuple[int, int]:
    """Estimate ``(offset_ns, error_ns)`` with ``clock() + offset_ns`` ≈ rank 0's clock, ``|error| <= error_ns``.

    Collective: every rank of ``group`` must call it (``rank`` is the rank within ``group``). Rank 0 serves ranks
    1..N-1 in turn and returns ``(0, 0)``. ``clock`` exists so tests can shift a rank's clock.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    world_size = dist.get_world_size(group)
    buf = torch.zeros(1, dtype=torch.int64)
    if rank == 0:
        for peer in range(1, world_size):
            peer_global = _global_rank(group, peer)
            for _ in range(rounds):
                dist.recv(buf, src=peer_global, group=group)
                buf[0] = clock()
                dist.send(buf, dst=peer_global, group=group)
        return 0, 0
    root = _global_rank(group, 0)
    best_rtt, best_offset = None, 0
    for _ in range(rounds):
        t0 = clock()
        dist.send(buf, dst=root, group=group)
        dist.recv(buf, src=root, group=group)
        t1 = clock()
        rtt = t1 - t0
        if best_rtt is None or rtt < best_rtt:
            # Integer arithmetic: the midpoint is exact to 1 ns, and ns are all the tracer records.
            best_rtt, best_offset = rtt, int(buf[0]) - (t0 + t1) // 2
    return best_offset, (best_rtt + 1) // 2


def _global_rank(group, group_rank: int) -> int:
    # send/recv address peers by global rank, even when given a group.
    return group_rank if group is None else dist.get_global_rank(group, group_rank)
