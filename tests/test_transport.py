"""pipeline.transport: which backend carries activations for a node's devices and ranks, and the errors that
say what to change before any rank waits on another."""

from __future__ import annotations

import pytest

from launch.job import resolve_transport
from pp_runtime.config import ConfigError, PipelineConfig
from tests.jobs import run_job_outcomes, run_job_ranks
from tests.tiny_models import make_tiny_model


@pytest.mark.parametrize("name", ["auto", "gloo"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_cpu_always_uses_gloo(name, ranks):
    assert resolve_transport(name, device_type="cpu", local_world_size=ranks, gpu_count=0) == "gloo"


def test_nccl_on_the_cpu_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"pipeline\.transport=nccl.*pipeline\.transport=gloo"):
        resolve_transport("nccl", device_type="cpu", local_world_size=2, gpu_count=0)


@pytest.mark.parametrize("ranks,gpus,want", [(1, 1, "nccl"), (2, 2, "nccl"), (2, 8, "nccl"), (2, 1, "gloo"),
                                             (4, 2, "gloo"), (3, 2, "gloo")])
def test_auto_is_nccl_only_when_every_rank_has_its_own_gpu(ranks, gpus, want):
    assert resolve_transport("auto", device_type="cuda", local_world_size=ranks, gpu_count=gpus) == want


@pytest.mark.parametrize("ranks,gpus", [(1, 1), (2, 1), (8, 8), (4, 2)])
def test_explicit_gloo_on_cuda_stays_gloo(ranks, gpus):
    assert resolve_transport("gloo", device_type="cuda", local_world_size=ranks, gpu_count=gpus) == "gloo"


def test_explicit_nccl_with_its_own_gpu_per_rank_stays_nccl():
    assert resolve_transport("nccl", device_type="cuda", local_world_size=4, gpu_count=4) == "nccl"


@pytest.mark.parametrize("ranks,gpus", [(2, 1), (3, 2)])
def test_two_ranks_on_one_gpu_with_nccl_say_what_to_set(ranks, gpus):
    with pytest.raises(ConfigError) as err:
        resolve_transport("nccl", device_type="cuda", local_world_size=ranks, gpu_count=gpus)
    text = str(err.value)
    assert f"{ranks} ranks share {gpus} GPU" in text and "pipeline.transport=gloo" in text
    assert f"--nproc_per_node={gpus}" in text


def test_unknown_transport_is_rejected_by_validate():
    with pytest.raises(ConfigError, match=r"pipeline\.transport='mpi'.*auto, nccl, gloo"):
        PipelineConfig(stages=2, transport="mpi").validate()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


_JOB = ["workload=synthetic", "workload.num_requests=3", "workload.prefill_len=6", "scheduler=fcfs",
        "scheduler.token_budget=16", "cache.block_size=4", "cache.num_blocks=32", "tracer.enabled=false"]


def test_nccl_on_the_cpu_fails_every_rank_before_they_meet(model, tmp_path):
    outcomes = run_job_outcomes(2, [f"model.path={model}", "pipeline.transport=nccl", f"output_dir={tmp_path}",
                                    *_JOB], timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "ConfigError" in o.error and "pipeline.transport=nccl" in o.error, o.error
        assert "init_process_group" not in o.error and "PipelineError" not in o.error


def test_explicit_gloo_runs_a_cpu_job(model, tmp_path):
    metrics = run_job_ranks(2, [f"model.path={model}", "pipeline.transport=gloo", f"output_dir={tmp_path}", *_JOB])
    assert metrics["completed"] == 3


def _ring(rank: int, world: int, metas: list):
    """Stage 0 sends each meta (with activations) round a 2-rank ring; stage 1 echoes it back."""
    import datetime

    import torch
    import torch.distributed as dist

    from pp_runtime.trace.tracer import Tracer
    from stages.transport import DATA, Transport

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        t = Transport(rank, world, device=torch.device("cpu"), hidden_size=3, dtype=torch.float32, timeout_s=60,
                      tracer=Tracer(rank, capacity=64, enabled=False, device=torch.device("cpu")))
        got = []
        for i, meta in enumerate(metas):
            if rank == 0:
                t.send(i, meta, torch.full((2, 3), float(i)))
                msg = t.recv()
                got.append((msg.kind == DATA, msg.mb_id, msg.meta, msg.tensor))
            else:
                msg = t.recv()
                t.send(msg.mb_id, msg.meta, msg.tensor)
        t.flush()
        return got
    finally:
        dist.destroy_process_group()


def test_metadata_inside_the_header_and_too_large_for_it_both_arrive():
    import torch

    from tests.multiproc import run_ranks

    small, large = {"tokens": [1, 2, 3]}, {"blob": bytes(range(256)) * 200}  # 51 KB: sent after the header
    got = run_ranks(_ring, 2, [small, large, small])[0]
    assert [(ok, mb, meta) for ok, mb, meta, _ in got] == [(True, 0, small), (True, 1, large), (True, 2, small)]
    for i, (*_, tensor) in enumerate(got):
        assert torch.equal(tensor, torch.full((2, 3), float(i)))
