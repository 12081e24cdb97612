"""launch.run's per-rank Hydra overrides: one shared run directory, per-rank logs, .hydra/ from rank 0 only."""

from launch.run import rank_overrides


def _env(rank):
    return {"RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}


def test_ranks_of_one_torchrun_job_share_a_run_dir_and_log_apart():
    r0, r1 = rank_overrides([], _env(0)), rank_overrides([], _env(1))
    dir0 = [a for a in r0 if a.startswith("hydra.run.dir=outputs/")]
    dir1 = [a for a in r1 if a.startswith("hydra.run.dir=outputs/")]
    assert len(dir0) == 1 and dir0 == dir1  # stamped with the (shared) parent's start time
    assert any(a.endswith("/rank0.log") for a in r0) and any(a.endswith("/rank1.log") for a in r1)
    assert "hydra.output_subdir=null" in r1 and "hydra.output_subdir=null" not in r0


def test_an_explicit_run_dir_is_kept_and_plain_python_gets_no_stamp():
    assert not any(a.startswith("hydra.run.dir=") for a in rank_overrides(["hydra.run.dir=out"], _env(0)))
    assert not any(a.startswith("hydra.run.dir=") for a in rank_overrides([], {}))
