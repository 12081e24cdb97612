"""Resuming a run directory: a job stopped by SIGTERM, or by SIGKILL of one rank, or left with a torn last line,
completes on a rerun with every request id exactly once and the same greedy outputs as an uninterrupted run;
a changed config or request file is refused, unless runtime.resume=false (start over) or force."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from launch.rank_job import resolve_rank_job
from pp_runtime.config import ConfigError
from pp_runtime.rundir.outputs_file import check_ids, scan_outputs
from pp_runtime.rundir.run_state import MARKER_FILE, STATE_FILE, begin_attempt, plan_resume, read_state
from stages.preemption import EXIT_PREEMPTED, Preempted
from tests.jobs import make_config, read_outputs, run_job_outcomes, run_job_ranks
from tests.multiproc import collect_outcomes, start_ranks
from tests.tiny_models import make_tiny_model, write_jsonl

N = 12
BASE = ["scheduler=fcfs", "scheduler.token_budget=16", "scheduler.chunk_size=8", "cache.block_size=4",
        "cache.num_blocks=64", "tracer.timeline=false", "runtime.timeout_s=30", "runtime.drain_timeout_s=0"]


def _requests(n: int = N, max_tokens: int = 6) -> list[dict]:
    return [{"id": f"r{i}", "prompt_token_ids": [(7 * i + j) % 300 + 2 for j in range(6 + i % 5)],
             "max_tokens": max_tokens, "ignore_eos": True} for i in range(n)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=2)


@pytest.fixture(scope="module")
def request_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("req") / "requests.jsonl", _requests())


@pytest.fixture(scope="module")
def reference(model, request_file, tmp_path_factory):
    """Greedy outputs of one uninterrupted 2-stage run."""
    out = tmp_path_factory.mktemp("reference")
    run_job_ranks(2, _overrides(model, request_file, out))
    return _tokens(out)


def _overrides(model, request_file, out, *extra) -> list[str]:
    return [f"model.path={model}", "workload=jsonl", f"workload.path={request_file}", f"output_dir={out}", *BASE,
            *extra]


def _tokens(out) -> dict[str, list[int]]:
    return {i: r["output_token_ids"] for i, r in read_outputs(out).items()}


def _ids(out) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "outputs.jsonl").read_text().splitlines()]


def _rank_main(rank: int, world_size: int, overrides: list[str]):
    """A rank as launch.run runs it: the exit code is the documented one (75 when preempted)."""
    from launch.run import run_or_exit

    run_or_exit(make_config(["runtime.progress=false", *overrides]))


def _wait_for_lines(path, n: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (count := path.read_bytes().count(b"\n")) >= n:
            return count
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines")


def _assert_complete(out, reference):
    ids = _ids(out)
    assert sorted(ids) == sorted(reference) and len(ids) == len(set(ids)) == N  # every id exactly once
    assert _tokens(out) == reference  # greedy fp32: the resumed job equals the uninterrupted one
    assert not (out / MARKER_FILE).exists()
    assert json.loads((out / STATE_FILE).read_text())["status"] == "complete"


def test_sigterm_stops_every_rank_with_the_documented_code_and_a_rerun_completes(model, request_file, reference,
                                                                                 tmp_path):
    overrides = ["pipeline.stages=2", *_overrides(model, request_file, tmp_path), "debug.signal_after=3"]
    outcomes = collect_outcomes(*start_ranks(_rank_main, 2, overrides), timeout=90)
    assert [o.exitcode for o in outcomes] == [EXIT_PREEMPTED] * 2, [o.error for o in outcomes]
    first = _ids(tmp_path)
    assert 3 <= len(first) < N
    assert "preempted" in (tmp_path / MARKER_FILE).read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "preempted" and metrics["unfinished"] == N - len(first)
    assert metrics["ids_check"]["num_missing"] == N - len(first)

    metrics = run_job_ranks(2, _overrides(model, request_file, tmp_path))
    _assert_complete(tmp_path, reference)
    assert _ids(tmp_path)[:len(first)] == first  # appended, the earlier lines untouched
    assert metrics["resumed"] == len(first) and metrics["num_requests"] == N - len(first)
    assert metrics["totals"]["requests"] == metrics["totals"]["completed"] == N
    assert metrics["attempt"] == 2 and metrics["ids_check"]["ok"]


def test_sigusr1_to_rank_0_drains_and_every_rank_exits_75(model, request_file, reference, tmp_path):
    outputs = tmp_path / "outputs.jsonl"
    procs, pipes = start_ranks(_rank_main, 2, ["pipeline.stages=2", *_overrides(model, request_file, tmp_path),
                                               "debug.stage_delay_ms=40"])
    _wait_for_lines(outputs, 2)
    os.kill(procs[0].pid, signal.SIGUSR1)  # what Slurm's --signal sends before the time limit
    outcomes = collect_outcomes(procs, pipes, timeout=30)  # runtime.timeout_s
    assert [o.exitcode for o in outcomes] == [EXIT_PREEMPTED] * 2, [o.error for o in outcomes]
    assert not any(p.is_alive() for p in procs)  # no orphans
    lines = outputs.read_text().splitlines()
    assert 2 <= len(lines) < N and all(json.loads(line)["finish_reason"] == "length" for line in lines)
    assert "SIGUSR1" in (tmp_path / MARKER_FILE).read_text()
    run_job_ranks(2, _overrides(model, request_file, tmp_path))
    _assert_complete(tmp_path, reference)


def test_a_signal_to_another_rank_is_passed_on_to_rank_0(model, request_file, tmp_path):
    """One node's torchrun was signalled: rank 0 still decides, drains, and every rank exits 75."""
    many = write_jsonl(tmp_path / "many.jsonl", _requests(n=48))  # rank 0 learns of it within a poll: leave work
    out = tmp_path / "run"
    procs, pipes = start_ranks(_rank_main, 2, ["pipeline.stages=2", *_overrides(model, many, out),
                                               "debug.stage_delay_ms=40"])
    _wait_for_lines(out / "outputs.jsonl", 2)
    os.kill(procs[1].pid, signal.SIGTERM)
    outcomes = collect_outcomes(procs, pipes, timeout=30)
    assert [o.exitcode for o in outcomes] == [EXIT_PREEMPTED] * 2, [o.error for o in outcomes]
    assert "stopped by SIGTERM on stage 1" in (out / MARKER_FILE).read_text()
    assert len(_ids(out)) < 48


def test_sigkill_of_one_rank_fails_the_others_and_a_rerun_completes(model, request_file, reference, tmp_path):
    outputs = tmp_path / "outputs.jsonl"
    procs, pipes = start_ranks(_rank_main, 2, ["pipeline.stages=2", *_overrides(model, request_file, tmp_path),
                                               "debug.stage_delay_ms=40"])
    _wait_for_lines(outputs, 2)
    os.kill(procs[1].pid, signal.SIGKILL)
    outcomes = collect_outcomes(procs, pipes, timeout=30)
    assert outcomes[1].exitcode == -signal.SIGKILL
    assert outcomes[0].exitcode == 1, outcomes[0].error  # a stage failure, within runtime.timeout_s
    kept = _ids(tmp_path)  # every line complete JSON
    assert 2 <= len(kept) < N and (tmp_path / MARKER_FILE).exists()
    metrics = run_job_ranks(2, _overrides(model, request_file, tmp_path))
    _assert_complete(tmp_path, reference)
    assert metrics["resumed"] == len(kept)


def test_a_torn_last_line_is_recomputed(model, request_file, reference, tmp_path):
    with pytest.raises(Preempted):
        run_job_ranks(1, _overrides(model, request_file, tmp_path, "debug.signal_after=5"))
    outputs = tmp_path / "outputs.jsonl"
    data = outputs.read_bytes()
    kept = data[:data.rstrip(b"\n").rfind(b"\n") + 1]
    outputs.write_bytes(kept + data[len(kept):][:20])  # as if killed in the middle of writing the last line
    scan = scan_outputs(outputs)
    assert scan.torn and len(scan.ids) == kept.count(b"\n") >= 4
    metrics = run_job_ranks(1, _overrides(model, request_file, tmp_path))
    _assert_complete(tmp_path, reference)  # (the same greedy tokens as the 2-stage reference: fp32)
    assert metrics["resumed"] == len(scan.ids) and metrics["num_requests"] == N - len(scan.ids)


def test_a_damaged_line_before_the_last_is_refused_by_name(tmp_path):
    path = tmp_path / "outputs.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match=r"outputs.jsonl:2 is not an outputs record"):
        scan_outputs(path)


def test_ids_check_reports_missing_and_repeated_ids():
    check = check_ids(["a", "b", "c"], ["a", "c", "c", "x"])
    assert not check["ok"]
    assert (check["missing"], check["duplicated"], check["unknown"]) == (["b"], ["c"], ["x"])
    assert check_ids(["a", "b"], ["b", "a"])["ok"]


def test_a_changed_request_file_is_refused_on_every_rank_before_they_meet(model, request_file, tmp_path):
    run_job_ranks(2, _overrides(model, request_file, tmp_path / "run"))
    changed = write_jsonl(tmp_path / "changed.jsonl", _requests(max_tokens=5))
    outcomes = run_job_outcomes(2, _overrides(model, changed, tmp_path / "run"), timeout=60)
    for o in outcomes:
        assert o.exitcode == 1 and "ConfigError" in o.error and "the requests changed" in o.error, o.error
        assert "runtime.resume=false" in o.error and "runtime.resume=force" in o.error
        assert "init_process_group" not in o.error  # refused in resolve_rank_job(), before any rank waited


def test_a_changed_config_is_refused_naming_the_key(model, request_file, tmp_path):
    run_job_ranks(1, _overrides(model, request_file, tmp_path))
    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path, "scheduler.token_budget=8")])
    with pytest.raises(ConfigError, match=r"scheduler.token_budget: 16 -> 8"):
        resolve_rank_job(cfg)
    # runtime.*, tracer.* and debug.* may change between attempts
    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path, "runtime.timeout_s=99",
                                                         "tracer.enabled=false", "debug.fail_after=3")])
    assert len(resolve_rank_job(cfg).resume.done) == N


def test_resume_false_moves_the_earlier_run_aside_and_force_keeps_it(model, request_file, reference, tmp_path):
    run_job_ranks(1, _overrides(model, request_file, tmp_path))
    before = {f: (tmp_path / f).read_bytes() for f in ("outputs.jsonl", "metrics.json", "events.npz", "bubbles.json")}
    (tmp_path / "replay").mkdir()  # pp-sim --replay of the earlier run
    (tmp_path / "replay" / "metrics.json").write_text("{}")
    (tmp_path / "cost_model.json").write_text("earlier")
    fewer = write_jsonl(tmp_path / "fewer.jsonl", _requests()[:8])
    # Untraced this time: the earlier run's traces must not pass for this run's. Sarathi writes its own cost model,
    # after the earlier one has moved aside.
    metrics = run_job_ranks(1, _overrides(model, fewer, tmp_path, "runtime.resume=false", "tracer.enabled=false",
                                          "scheduler=sarathi"))
    (aside,) = tmp_path.glob("old-*")
    assert {f: (aside / f).read_bytes() for f in before} == before and (aside / "replay" / "metrics.json").exists()
    assert (aside / "cost_model.json").read_text() == "earlier"
    assert "c_tok" in json.loads((tmp_path / "cost_model.json").read_text())
    for stale in ("events.npz", "bubbles.json", "trace.json", "replay"):
        assert not (tmp_path / stale).exists(), stale
    assert read_state(aside)["num_requests"] == N and read_state(tmp_path)["num_requests"] == 8
    assert sorted(_ids(tmp_path)) == sorted(f"r{i}" for i in range(8)) and metrics["resumed"] == 0
    # force: the request file changed again (all 12 now), the 8 finished lines stay and only 4 run
    metrics = run_job_ranks(1, _overrides(model, request_file, tmp_path, "runtime.resume=force"))
    assert metrics["resumed"] == 8 and metrics["num_requests"] == 4
    _assert_complete(tmp_path, reference)


def test_resume_false_moves_an_earlier_runs_files_aside_even_without_outputs(model, request_file, tmp_path):
    """A run that wrote its reports but no outputs.jsonl line (or a replay/ of it) still does not pass for the
    new one; a directory holding no run's files has nothing to move."""
    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path, "runtime.resume=false")])
    assert not plan_resume(cfg, []).move_aside
    for name in ("events.npz", "cost_model.json", "timeline.png"):
        (tmp_path / name).write_text("earlier")
    (tmp_path / "notes.txt").write_text("mine")
    plan = plan_resume(cfg, [])
    assert plan.move_aside
    begin_attempt(tmp_path, plan)
    (aside,) = tmp_path.glob("old-*")
    assert sorted(p.name for p in aside.iterdir()) == ["cost_model.json", "events.npz", "timeline.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_FILE, "notes.txt", aside.name, STATE_FILE]


def test_a_run_recorded_when_every_policy_said_prefill_order_fair_still_resumes(model, request_file, tmp_path):
    """Before scheduler.prefill_order defaulted to null, run_state.json said fair under orca too (unread there)."""
    from pp_runtime.rundir.run_state import config_fingerprint

    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path, "scheduler=orca")])
    cfg.validate()
    plan = plan_resume(cfg, [])
    # ... and a run could set max_chunks_in_flight under orca, which ignored it, before it was refused there.
    recorded = dict(config_fingerprint(cfg), **{"scheduler.prefill_order": "fair",
                                                 "scheduler.max_chunks_in_flight": 2})
    plan.state.update(config=recorded, config_hash="recorded-before")
    begin_attempt(tmp_path, plan)
    assert plan_resume(cfg, []).state["attempt"] == 2
    cfg.scheduler.chunk_size = 4  # a real change is still refused
    with pytest.raises(ConfigError, match=r"scheduler.chunk_size: 8 -> 4"):
        plan_resume(cfg, [])


def test_a_run_recorded_before_a_config_key_existed_resumes_with_its_default(model, request_file, tmp_path):
    """A key added to the config after a run started is not in its run_state.json: the run still resumes, unless
    the key is now set to something other than its default."""
    from pp_runtime.rundir.run_state import config_fingerprint

    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path)])
    cfg.validate()
    plan = plan_resume(cfg, [])
    recorded = config_fingerprint(cfg)
    del recorded["cache.gpu_memory_utilization"]  # as if the key had come after the run started
    plan.state.update(config=recorded, config_hash="recorded-before")
    begin_attempt(tmp_path, plan)
    assert plan_resume(cfg, []).state["attempt"] == 2
    cfg.cache.gpu_memory_utilization = 0.5
    with pytest.raises(ConfigError, match=r"cache.gpu_memory_utilization: 0.9 -> 0.5"):
        plan_resume(cfg, [])


def test_splitting_the_lm_head_or_not_between_attempts_resumes(model, request_file, tmp_path):
    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path)])
    cfg.validate()
    begin_attempt(tmp_path, plan_resume(cfg, []))
    (tmp_path / "outputs.jsonl").write_text(json.dumps({"id": "x", "finish_reason": "length"}) + "\n")
    cfg.pipeline.split_lm_head = False  # the same tokens either way: not a change of the run
    assert plan_resume(cfg, []).state["attempt"] == 2


def test_runtime_resume_values_are_validated(model, request_file, tmp_path):
    for value, expected in (("false", False), ("true", True), ("force", "force")):
        assert make_config([f"runtime.resume={value}"]).runtime.resume == expected
    for bad, key in (("runtime.resume=maybe", "runtime.resume='maybe'"), ("runtime.drain_timeout_s=-1",
                     "runtime.drain_timeout_s=-1.0"), ("debug.signal=SIGKILL", "debug.signal='SIGKILL'")):
        with pytest.raises(ConfigError, match=f"{key} is invalid"):
            make_config(["pipeline.stages=1", bad]).validate()
    assert plan_resume(make_config([f"output_dir={tmp_path}"]), []).done == frozenset()


def test_a_finished_run_reruns_as_a_no_op_and_a_repeated_line_fails_the_ids_check(model, request_file, tmp_path):
    run_job_ranks(1, _overrides(model, request_file, tmp_path))
    metrics_file = (tmp_path / "metrics.json").read_text()
    assert json.loads(metrics_file)["launch_dir"] == os.getcwd()  # where relative paths are, for pp-sim --replay
    again = run_job_ranks(1, _overrides(model, request_file, tmp_path))
    assert again["resumed"] == N and again["num_requests"] == 0 and again["ids_check"]["ok"]
    assert (tmp_path / "metrics.json").read_text() == metrics_file  # the finishing attempt's figures stand
    lines = (tmp_path / "outputs.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "outputs.jsonl").write_text("".join(lines + lines[:1]))  # e.g. two jobs wrote into one directory
    with pytest.raises(RuntimeError, match=r"fails the ids check: 1 id\(s\) appear more than once"):
        run_job_ranks(1, _overrides(model, request_file, tmp_path))
    assert "incomplete" in (tmp_path / MARKER_FILE).read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["ids_check"]["duplicated"] == ["r0"]


@pytest.mark.parametrize("drain_s", [0, 60])
def test_after_a_signal_no_request_is_admitted_and_the_running_ones_drain(model, request_file, tmp_path, drain_s):
    """scheduler.max_num_seqs=3: when the first request finishes, at most 2 others are running. With a drain
    window they finish (and nothing else starts); with none, the job stops at once."""
    with pytest.raises(Preempted, match="SIGUSR1"):
        run_job_ranks(1, _overrides(model, request_file, tmp_path, "scheduler.max_num_seqs=3", "debug.signal_after=1",
                                    "debug.signal=SIGUSR1", f"runtime.drain_timeout_s={drain_s}"))
    ids = _ids(tmp_path)
    if drain_s:
        assert sorted(ids) == ["r0", "r1", "r2"]  # FCFS: the three running requests, and none admitted later
    else:
        assert len(ids) < 3
    assert json.loads((tmp_path / "metrics.json").read_text())["unfinished"] == N - len(ids)


def test_a_signal_while_waiting_for_an_arrival_stops_the_job(model, tmp_path):
    """Online mode: rank 0 sleeps until the next arrival (here 10 minutes away) but wakes for a signal."""
    late = write_jsonl(tmp_path / "late.jsonl", [{"id": "now", "prompt_token_ids": [5, 6, 7], "max_tokens": 2},
                                                 {"id": "later", "prompt_token_ids": [5, 6], "arrival_s": 600.0}])
    out = tmp_path / "run"
    procs, pipes = start_ranks(_rank_main, 1, ["pipeline.stages=1", *_overrides(model, late, out)])
    _wait_for_lines(out / "outputs.jsonl", 1)
    os.kill(procs[0].pid, signal.SIGTERM)
    (outcome,) = collect_outcomes(procs, pipes, timeout=30)
    assert outcome.exitcode == EXIT_PREEMPTED, outcome.error
    assert _ids(out) == ["now"] and "SIGTERM" in (out / MARKER_FILE).read_text()


def test_sigterm_in_the_middle_of_a_pipelined_chunked_prompt_and_a_rerun_matches_generate(model, tmp_path):
    """sarathi, chunks of 3 on 2 stages: the short request finishes, the signal comes while chunks of the
    230-token prompt are in flight; they come back, nothing is written for it, and the rerun computes it whole."""
    from tests.tiny_models import reference_generate

    reqs = [{"id": "short", "prompt_token_ids": [5, 6, 7, 8], "max_tokens": 1, "ignore_eos": True},
            {"id": "long", "prompt_token_ids": [(11 * j) % 300 + 2 for j in range(230)], "max_tokens": 5,
             "ignore_eos": True}]
    path = write_jsonl(tmp_path / "long.jsonl", reqs)
    out = tmp_path / "run"
    overrides = ["pipeline.stages=2", f"model.path={model}", "workload=jsonl", f"workload.path={path}",
                 f"output_dir={out}", "scheduler=sarathi", "scheduler.chunk_size=3", "scheduler.token_budget=8",
                 "scheduler.time_balanced=false", "cache.block_size=4", "cache.num_blocks=128",
                 "tracer.timeline=false", "runtime.timeout_s=30", "runtime.drain_timeout_s=0"]
    outcomes = collect_outcomes(*start_ranks(_rank_main, 2, [*overrides, "debug.signal_after=1"]), timeout=90)
    assert [o.exitcode for o in outcomes] == [EXIT_PREEMPTED] * 2, [o.error for o in outcomes]
    assert _ids(out) == ["short"]
    run_job_ranks(2, overrides)
    assert _ids(out) == ["short", "long"]
    assert _tokens(out)["long"] == reference_generate(model, reqs[1]["prompt_token_ids"], 5)


def test_an_attempt_stopped_before_its_first_output_is_resumed_not_restarted(model, request_file, tmp_path):
    """run_state.json without a line in outputs.jsonl (stopped before any request finished): the next attempt
    keeps the sampling seed, counts on, and refuses a changed config like any resume."""
    cfg = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path)])
    first = plan_resume(cfg, [])
    begin_attempt(tmp_path, first)  # what rank 0 writes once the ranks met; then the job stops with no output
    (tmp_path / "outputs.jsonl").touch()
    again = plan_resume(cfg, [])
    assert again.state["attempt"] == 2 and again.state["sampling_seed"] == first.state["sampling_seed"]
    assert read_state(tmp_path)["sampling_seed"] == first.state["sampling_seed"] and not again.done
    changed = make_config(["pipeline.stages=1", *_overrides(model, request_file, tmp_path, "scheduler.token_budget=8")])
    with pytest.raises(ConfigError, match=r"scheduler.token_budget: 16 -> 8"):
        plan_resume(changed, [])
