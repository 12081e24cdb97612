"""A failing stage ends the whole job quickly and non-zero, and every rank's error names the failing stage."""

from __future__ import annotations

import pytest

from tests.jobs import run_job_outcomes
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=3)


@pytest.mark.parametrize("stages,fail_after", [(2, 0), (3, 2)])
def test_injected_failure_on_stage_1_ends_every_rank(model, tmp_path, stages, fail_after):
    outcomes = run_job_outcomes(stages, [f"model.path={model}", "workload=synthetic", "workload.num_requests=6",
                                         "workload.prefill_len=8", "workload.pd_ratio=1", "scheduler=fcfs",
                                         "scheduler.token_budget=8", "cache.num_blocks=64", "cache.block_size=4",
                                         "debug.fail_stage=1", f"debug.fail_after={fail_after}",
                                         "runtime.timeout_s=60", f"output_dir={tmp_path}"], timeout=90)
    for o in outcomes:
        assert o.exitcode not in (0, None), f"rank {o.rank} exited {o.exitcode}"
        assert "stage 1" in o.error, f"rank {o.rank}: {o.error}"
    assert "injected failure on stage 1" in outcomes[1].error


def test_an_error_after_another_stage_failed_names_that_stage(monkeypatch):
    """Wherever a dead peer surfaces (a reset connection in isend, not only in a wait), the error names the
    stage that failed first; the first failing stage records itself instead."""
    import stages.transport as comm
    from launch.rank_job import _blame

    reported = []
    monkeypatch.setattr(comm, "report_failure", lambda rank, exc: reported.append(rank))
    monkeypatch.setattr(comm, "failure_message", lambda: "stage 1 failed: InjectedFailure: boom")
    with pytest.raises(comm.PipelineError, match="stage 0: aborting, stage 1 failed: InjectedFailure: boom"):
        _blame(0, RuntimeError("Connection reset by peer"))
    _blame(1, RuntimeError("boom"))  # the failing stage itself: its own error stands
    monkeypatch.setattr(comm, "failure_message", lambda: None)
    _blame(2, RuntimeError("first"))
    assert reported == [2]
