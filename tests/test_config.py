"""Config: every group composes through Hydra; every bad value fails validate() naming its key; launch.rank_job.prepare
fails fast (before any process group) on a wrong stage count, a missing model folder and too few layers."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from launch.rank_job import resolve_rank_job
from pp_runtime.config import POLICIES, Config, ConfigError
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model

_GROUPS = ("model", "pipeline", "scheduler", "workload", "cache", "tracer", "runtime", "debug")
# Composes from the real conf/ tree; pipeline.stages is otherwise only filled in by resolve_rank_job() from WORLD_SIZE.
BASE = ["pipeline.stages=2"]


@functools.cache
def _base_node():
    return OmegaConf.structured(make_config(BASE))


def _with(overrides: list[str]) -> Config:
    """``make_config([*BASE, *overrides])`` for plain ``key=value`` overrides, without a Hydra compose each time
    (about half a second apiece): the same typed merge onto the composed config."""
    return OmegaConf.to_object(OmegaConf.merge(_base_node(), OmegaConf.from_dotlist(overrides)))


def _valid(overrides: list[str]) -> Config:
    cfg = make_config([*BASE, *overrides])
    assert isinstance(cfg, Config)
    cfg.validate()
    return cfg


def test_default_composition_has_documented_defaults():
    cfg = make_config([])
    assert cfg.scheduler.policy == "sarathi"
    assert cfg.workload.kind == "default"
    assert cfg.model.path is None
    assert cfg.pipeline.stages is None
    assert (cfg.device, cfg.dtype) == ("auto", "auto")


@pytest.mark.parametrize("policy", POLICIES)
def test_every_scheduler_group_composes(policy):
    assert _valid([f"scheduler={policy}"]).scheduler.policy == policy


@pytest.mark.parametrize("policy", POLICIES)
def test_prefill_order_defaults_to_fair_where_read_and_is_refused_where_ignored(policy):
    # The default (null) works with every policy; sarathi and throttle report it as fair once validated.
    default = _valid([f"scheduler={policy}"]).scheduler.prefill_order
    assert default == ("fair" if policy in ("sarathi", "throttle") else None)
    for order in ("fair", "deadline", "fcfs"):
        cfg = make_config([*BASE, f"scheduler={policy}", f"scheduler.prefill_order={order}"])
        if policy in ("sarathi", "throttle"):
            cfg.validate()
            assert cfg.scheduler.prefill_order == order
            continue
        with pytest.raises(ConfigError) as exc:
            cfg.validate()
        message = str(exc.value)
        assert message.startswith(f"scheduler.prefill_order='{order}'") and f"scheduler.policy='{policy}'" in message
        assert "remove scheduler.prefill_order" in message


@pytest.mark.parametrize("policy", ["sarathi", "throttle", "orca", "vllm", "static", "fcfs"])
def test_max_chunks_in_flight_is_refused_where_no_chunks_are_pipelined(policy):
    cfg = make_config([*BASE, f"scheduler={policy}", "scheduler.max_chunks_in_flight=1"])
    if policy in ("sarathi", "throttle"):
        cfg.validate()
        return
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    message = str(exc.value)
    assert message.startswith("scheduler.max_chunks_in_flight=1") and f"scheduler.policy='{policy}'" in message


@pytest.mark.parametrize("kind", ["default", "synthetic"])
def test_a_workload_path_is_refused_where_no_file_is_read(kind):
    with pytest.raises(ConfigError, match=rf"workload.path='x.jsonl' is invalid: workload={kind} reads no file"):
        make_config([*BASE, f"workload={kind}", "workload.path=x.jsonl"]).validate()


@pytest.mark.parametrize("overrides, kind", [
    (["workload=default"], "default"),
    (["workload=synthetic"], "synthetic"),
    (["workload=jsonl", "workload.path=requests.jsonl"], "jsonl"),
    (["workload=trace", "workload.path=trace.csv"], "trace"),
])
def test_every_workload_group_composes(overrides, kind):
    cfg = _valid(overrides)
    assert cfg.workload.kind == kind
    if kind == "trace":  # the trace group scales a real trace down for a CPU
        assert cfg.workload.length_scale < 1


def test_the_trace_group_names_no_file_outside_the_repository():
    with pytest.raises(ConfigError, match=r"workload.path=FILE.csv.*vidur"):
        _valid(["workload=trace"])


def test_local_model_group_takes_the_path(tmp_path):
    cfg = _valid(["model=local", f"model.path={tmp_path}"])
    assert cfg.model.path == str(tmp_path)


def test_local_model_group_without_path_fails():
    with pytest.raises(Exception, match=r"path"):
        make_config(["model=local"])


def test_other_groups_compose_with_overrides():
    cfg = _valid(["cache.block_size=32", "cache.num_blocks=100", "pipeline.layers_per_stage=[3,5]",
                  "pipeline.num_microbatches=4", "debug.fail_stage=1", "runtime.timeout_s=5", "tracer.enabled=false",
                  "device=cpu", "dtype=float32", "scheduler.tbt_slo_ms=50"])
    assert cfg.pipeline.layers_per_stage == [3, 5]
    assert cfg.pipeline.depth == 4
    assert (cfg.cache.block_size, cfg.cache.num_blocks) == (32, 100)
    assert cfg.tracer.enabled is False


def test_depth_defaults_to_stages():
    assert _valid([]).pipeline.depth == 2


@pytest.mark.parametrize("overrides, key", [
    (["scheduler.token_budget=0"], "scheduler.token_budget"),
    (["scheduler.policy=nope"], "scheduler.policy"),
    (["scheduler.chunk_size=0"], "scheduler.chunk_size"),
    (["scheduler.max_num_seqs=0"], "scheduler.max_num_seqs"),
    (["scheduler.tile=-1"], "scheduler.tile"),
    (["scheduler.tbt_slo_ms=0"], "scheduler.tbt_slo_ms"),
    (["cache.block_size=0"], "cache.block_size"),
    (["cache.num_blocks=0"], "cache.num_blocks"),
    (["cache.memory_gib=0"], "cache.memory_gib"),
    (["workload.arrival=x"], "workload.arrival"),
    (["workload.kind=nope"], "workload.kind"),
    (["workload=jsonl"], "workload.path"),
    (["workload=trace", "workload.path=null"], "workload.path"),
    (["workload.num_requests=0"], "workload.num_requests"),
    (["workload.length_scale=0"], "workload.length_scale"),
    (["workload.rate=0"], "workload.rate"),
    (["workload.distribution=normal"], "workload.distribution"),
    (["workload.prefill_len=0"], "workload.prefill_len"),
    (["workload.pd_ratio=0"], "workload.pd_ratio"),
    (["workload.max_tokens=0"], "workload.max_tokens"),
    (["device=tpu"], "device"),
    (["dtype=int8"], "dtype"),
    (["model.attention=xformers"], "model.attention"),
    (["model.max_model_len=1"], "model.max_model_len"),
    (["pipeline.stages=0"], "pipeline.stages"),
    (["pipeline.num_microbatches=1"], "pipeline.num_microbatches"),
    (["pipeline.layers_per_stage=[4]"], "pipeline.layers_per_stage"),
    (["pipeline.layers_per_stage=[4,0]"], "pipeline.layers_per_stage"),
    (["debug.fail_stage=2"], "debug.fail_stage"),
    (["debug.fail_stage=-1"], "debug.fail_stage"),
    (["runtime.timeout_s=0"], "runtime.timeout_s"),
    (["runtime.threads=0"], "runtime.threads"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_invalid_value_names_its_key(overrides, key):
    # A group choice (workload=jsonl) needs Hydra itself; plain values take the faster typed merge.
    picks_group = any(o.split("=")[0] in _GROUPS for o in overrides)
    cfg = make_config([*BASE, *overrides]) if picks_group else _with(overrides)
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    assert str(exc.value).startswith(f"{key}=")


def test_unset_stage_count_fails_validation():
    with pytest.raises(ConfigError, match=r"^pipeline\.stages=None"):
        make_config([]).validate()


@pytest.mark.parametrize("overrides, key", [
    (["tracer.capacity=0"], "tracer.capacity"),
    (["tracer.clock_sync_rounds=0"], "tracer.clock_sync_rounds"),
    (["debug.stage_delay_ms=-5"], "debug.stage_delay_ms"),
])
def test_tracer_and_debug_values_are_validated(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        _with(overrides).validate()


def test_fast_merge_matches_hydra_compose():
    overrides = ["scheduler.tile=8", "pipeline.layers_per_stage=[1,3]", "workload.path=null", "device=cpu"]
    assert _with(overrides) == make_config([*BASE, *overrides])


# --- launch.rank_job.resolve_rank_job: whatever can fail on bad input fails before any process group exists ---

@pytest.fixture
def world(monkeypatch):
    """Pretend to be one rank of a torchrun job of the given size."""

    def set_world(size: int, rank: int = 0) -> None:
        monkeypatch.setenv("WORLD_SIZE", str(size))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))

    yield set_world
    assert not dist.is_initialized()


@pytest.fixture
def keep_threads():
    # resolve_rank_job() sets torch's thread count from runtime.threads; give the rest of the session its setting back.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_prepare_rejects_stage_count_that_differs_from_world_size(world, keep_threads):
    world(1)
    cfg = make_config(["pipeline.stages=2"])
    with pytest.raises(ConfigError, match=r"^pipeline\.stages=2 .*1 rank") as exc:
        resolve_rank_job(cfg)
    assert "--nproc_per_node=2" in str(exc.value)


def test_prepare_without_torchrun_says_the_process_runs_alone(monkeypatch, keep_threads):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"^pipeline\.stages=2 but this process runs alone") as exc:
        resolve_rank_job(make_config(["pipeline.stages=2"]))
    assert "torchrun --nproc_per_node=2 -m launch.run" in str(exc.value)


def test_prepare_takes_stage_count_from_world_size(world, keep_threads):
    world(1)
    cfg = make_config(["model.path=/nonexistent"])
    with pytest.raises(FileNotFoundError):
        resolve_rank_job(cfg)
    assert cfg.pipeline.stages == 1


def test_prepare_missing_model_folder_names_model_path(world, keep_threads):
    world(1)
    with pytest.raises(FileNotFoundError, match=r"model\.path='/nonexistent'"):
        resolve_rank_job(make_config(["pipeline.stages=1", "model=local", "model.path=/nonexistent"]))


def test_prepare_folder_without_config_json_names_model_path(world, keep_threads, tmp_path):
    world(1)
    with pytest.raises(FileNotFoundError, match=r"model\.path=.*config\.json"):
        resolve_rank_job(make_config(["pipeline.stages=1", f"model.path={tmp_path}"]))


def test_prepare_more_stages_than_layers_fails_before_process_group(world, keep_threads, tmp_path):
    model_dir = make_tiny_model("llama", tmp_path / "m", num_layers=2)
    world(3)
    with pytest.raises(ConfigError, match=r"pipeline\.stages=3 is more than the model's 2 decoder layers"):
        resolve_rank_job(make_config(["pipeline.stages=3", f"model.path={model_dir}"]))
    assert not dist.is_initialized()


def test_prepare_validates_config_before_touching_the_model(world, keep_threads):
    world(2)
    # A bad value fails on its own key even though the model folder does not exist either.
    with pytest.raises(ConfigError, match=r"^scheduler\.token_budget=0"):
        resolve_rank_job(make_config(["pipeline.stages=2", "model.path=/nonexistent", "scheduler.token_budget=0"]))


def test_prepare_resolves_a_rank_job_on_a_tiny_model(world, keep_threads, tmp_path):
    model_dir = make_tiny_model("llama", tmp_path / "m", num_layers=3)
    world(2, rank=1)
    job = resolve_rank_job(make_config([
        "pipeline.stages=2", f"model.path={model_dir}", "device=cpu", "model.max_model_len=64", "cache.num_blocks=7",
        "workload=synthetic", "workload.num_requests=3", "workload.prefill_len=8", "workload.max_tokens=4"]))
    assert (job.rank, job.world_size) == (1, 2)
    assert job.device == torch.device("cpu") and job.dtype == torch.float32
    assert job.max_model_len == 64
    assert [i for r in job.layer_ranges for i in r] == [0, 1, 2]
    assert len(job.layer_ranges) == 2
    assert job.num_blocks == 7
    assert len(job.requests) == 3
    assert all(len(r.prompt_token_ids) < 64 for r in job.requests)


def test_prepare_rejects_flash_attention_on_cpu(world, keep_threads, tmp_path):
    model_dir = make_tiny_model("llama", tmp_path / "m", num_layers=2)
    world(1)
    with pytest.raises((ConfigError, ValueError), match=r"model\.attention=flash"):
        resolve_rank_job(make_config(["pipeline.stages=1", f"model.path={model_dir}", "device=cpu",
                                      "model.attention=flash", "workload=synthetic", "workload.num_requests=1",
                                      "workload.prefill_len=4"]))
