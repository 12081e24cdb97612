import math
import time

import torch.distributed as dist

from stages.clock_sync import estimate_clock_offset
from tests.multiproc import run_ranks

SHIFT_NS = 7_654_321_000


def _estimate(rank, world_size, shift_ns):
    dist.init_process_group("gloo")
    try:
        clock = (lambda: time.monotonic_ns() + shift_ns) if rank == 1 else time.monotonic_ns
        return estimate_clock_offset(rank, rounds=20, clock=clock)
    finally:
        dist.destroy_process_group()


def test_offsets_are_finite_and_errors_non_negative():
    results = run_ranks(_estimate, 3, 0, timeout=120)
    assert results[0] == (0, 0)
    for offset, error in results[1:]:
        assert isinstance(offset, int) and isinstance(error, int)
        assert math.isfinite(offset) and error >= 0
        # One host, one monotonic clock: the true offset is 0, so the estimate lies within its own error bound.
        assert abs(offset) <= error + 1


def test_known_shift_is_recovered_within_the_reported_error():
    (_, _), (offset, error) = run_ranks(_estimate, 2, SHIFT_NS, timeout=120)
    # Rank 1 reads monotonic + SHIFT, so adding -SHIFT maps it onto rank 0's clock; the bound is exact
    # (rank 0 read its clock inside rank 1's round trip), the 1 ns slack covers integer halving.
    assert abs(offset + SHIFT_NS) <= error + 1
