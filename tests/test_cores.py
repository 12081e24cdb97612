"""runtime.pin_cores: each rank of a CPU job on cores of its own, the mask restored afterwards."""

from __future__ import annotations

import os

import pytest

from launch.cores import pinned, rank_cores
from pp_runtime.config import ConfigError, RuntimeConfig


def test_ranks_take_consecutive_cores_in_rank_order():
    assert rank_cores([3, 0, 2, 1], local_rank=0, local_world_size=2, threads=1) == [0]
    assert rank_cores([3, 0, 2, 1], local_rank=1, local_world_size=2, threads=2) == [2, 3]
    assert rank_cores([4, 5, 6], local_rank=2, local_world_size=3, threads=1) == [6]
    assert rank_cores([0, 1], local_rank=0, local_world_size=3, threads=1) is None  # 3 ranks, 2 cores
    assert rank_cores([0, 1, 2, 3], local_rank=1, local_world_size=2, threads=3) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_pinned_keeps_the_block_on_the_rank_s_cores_and_restores_the_mask():
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    with pinned(True, device_type="cpu", local_rank=0, local_world_size=1, threads=1):
        assert os.sched_getaffinity(0) == {cores[0]}
    assert os.sched_getaffinity(0) == before
    with pinned("auto", device_type="cpu", local_rank=0, local_world_size=1, threads=1):  # auto: 2+ ranks only
        assert os.sched_getaffinity(0) == before
    if len(cores) >= 2:
        with pinned("auto", device_type="cpu", local_rank=1, local_world_size=2, threads=1):
            assert os.sched_getaffinity(0) == {cores[1]}
        assert os.sched_getaffinity(0) == before
    with pinned("auto", device_type="cuda", local_rank=0, local_world_size=1, threads=1):  # auto: the CPU only
        assert os.sched_getaffinity(0) == before
    with pinned(False, device_type="cpu", local_rank=0, local_world_size=1, threads=1):
        assert os.sched_getaffinity(0) == before
    too_many = len(before) + 1
    with pinned("auto", device_type="cpu", local_rank=0, local_world_size=too_many, threads=1):  # does not fit
        assert os.sched_getaffinity(0) == before
    with pytest.raises(ConfigError, match="runtime.pin_cores=true .* run fewer ranks on this node"):
        with pinned(True, device_type="cpu", local_rank=0, local_world_size=too_many, threads=1):
            pass
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("value", [1, "yes", None])
def test_pin_cores_takes_auto_true_or_false(value):
    with pytest.raises(ConfigError, match="runtime.pin_cores"):
        RuntimeConfig(pin_cores=value).validate()
    for ok in ("auto", True, False):
        RuntimeConfig(pin_cores=ok).validate()
