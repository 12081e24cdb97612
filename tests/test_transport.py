"""pipeline.transport: which backend carries activations for a node's devices and ranks, and the errors that
say what to change before any rank waits on another."""

from __future__ import annotations

import pytest

from launch.rank_job import resolve_transport
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


class _FakeStage:
    """A stage without a model: stage 0 makes rows ``mb.id * 1000 + row``, each later stage checks that its input
    holds exactly those rows plus one per stage before it (the right activations, in the right order, for the
    plan it holds) and adds one; the last samples ``5 + mb.id % 7`` per sampling piece."""

    def __init__(self, stage: int, world: int, *, hidden: int = 3, fail_at: int | None = None):
        from types import SimpleNamespace

        self.stage, self.hidden, self.fail_at = stage, hidden, fail_at
        self.model = SimpleNamespace(is_first=stage == 0, is_last=stage == world - 1)
        self.head_split = None  # the LM head is not split (tests/test_vocab_parallel.py runs a split one)
        self.computed: list[int] = []
        self.transport = None
        self.posted_while_computing: list[bool] = []  # whether the next input's receive was posted already

    def on_compute(self, stage: int) -> None:  # the Faults hook
        if len(self.computed) == self.fail_at:
            raise RuntimeError(f"injected failure on stage {stage}")

    def execute(self, mb, hidden=None):
        import torch

        from stages.executor import SampledTokens

        rows = torch.arange(mb.num_tokens, dtype=torch.float32) + 1000 * mb.id
        if hidden is not None:
            assert hidden.shape == (mb.num_tokens, self.hidden), (mb.id, hidden.shape)
            assert torch.equal(hidden[:, 0], rows + self.stage - 1), f"stage {self.stage}: wrong input for {mb!r}"
        self.computed.append(mb.id)
        if self.transport is not None and self.stage:
            self.posted_while_computing.append(bool(self.transport._posted))
        if self.model.is_last:
            return SampledTokens(torch.full((mb.num_samples,), 5 + mb.id % 7, dtype=torch.int64))
        return (rows + self.stage)[:, None].expand(-1, self.hidden).contiguous()  # [num_tokens, hidden]


def _pipeline(rank: int, world: int, depth: int, num_requests: int, stop_after: int | None = None,
              fail: tuple[int, int] | None = None, max_rows: int = 0, nccl: bool = False):
    """The real rank-0 engine (planner loop on the wall clock) and stage workers over real gloo transports, with
    fake stages. Returns (launch order, tokens per request, stopped early) on rank 0, the computed order elsewhere.
    ``stop_after``: a stop signal after that many launches (drain_timeout 0). ``fail``: (stage, at) fails.
    ``max_rows``: > 0 lets a stage post an activation receive before the plan for it has arrived. ``nccl``: the
    transports take their NCCL path (exact-size receives of known plans only, tag 0) over gloo, the stand-in for
    NCCL without GPUs."""
    import datetime

    import torch
    import torch.distributed as dist

    from launch.rank_job import _blame
    from pp_runtime.config import SchedulerConfig
    from pp_runtime.planner import make_planner
    from pp_runtime.request import Request, SamplingParams
    from pp_runtime.trace.tracer import Tracer
    from stages.engine import Engine
    from stages.transport import Transport
    from stages.worker import serve

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    try:
        stage = _FakeStage(rank, world, fail_at=fail[1] if fail and fail[0] == rank else None)
        tracer = Tracer(rank, capacity=4096, enabled=True, device=torch.device("cpu"))
        t = Transport(rank, world, device=torch.device("cpu"), hidden_size=3, dtype=torch.float32, timeout_s=30,
                      tracer=tracer, control_group=dist.new_group(backend="gloo"), max_rows=max_rows)
        if nccl:  # gloo works report completion only once waited on: the stand-in waits where NCCL would poll
            t._nccl, wait = True, t._wait
            t._wait = lambda work, what, peer, poll=False: wait(work, what, peer)
        stage.transport = t
        try:
            if rank != 0:
                serve(rank, stage, t, tracer, stage)
                return stage.computed, stage.posted_while_computing
            planner = make_planner(SchedulerConfig(policy="fcfs", token_budget=8, chunk_size=8), num_blocks=256,
                                   block_size=4, num_slots=depth, max_model_len=256)
            for i in range(num_requests):  # some prompts longer than the budget: chunked over micro-batches
                planner.add_request(Request(f"r{i}", tuple(range(2, 5 + 3 * i)), SamplingParams(max_tokens=3)))
            launched = []

            class Stop:
                name = "SIGTERM"

                @property
                def requested(self):
                    return stop_after is not None and len(stage.computed) >= stop_after

            engine = Engine(planner, stage, t, tracer, depth=depth, faults=stage, stop=Stop())
            engine.clock.launch = _recording(engine.clock.launch, launched)
            engine.run()
            tokens = {s.request.id: list(s.output_token_ids) for s in planner.seqs}
            return launched, tokens, engine.stopped_early
        except BaseException as exc:
            _blame(rank, exc)
            raise
    finally:
        dist.destroy_process_group()


def _recording(launch, launched: list):
    def wrapped(mb):
        launched.append(mb.id)
        return launch(mb)
    return wrapped


@pytest.mark.parametrize("max_rows", [0, 64])
@pytest.mark.parametrize("world,depth", [(2, 1), (2, 2), (2, 5), (3, 3), (3, 6)])
def test_micro_batches_in_flight_with_plans_sent_ahead_arrive_in_order(world, depth, max_rows):
    """depth > stages: more plans ahead than stages, every receive posted early (before its plan with
    ``max_rows``); nothing deadlocks, every stage computes every micro-batch in launch order with the activations
    of its plan, every token comes back."""
    from tests.multiproc import run_ranks

    got = run_ranks(_pipeline, world, depth, 6, None, None, max_rows, timeout=120)
    launched, tokens, stopped = got[0]
    assert not stopped and len(launched) > depth
    for s in range(1, world):
        computed, posted = got[s]
        assert computed == launched, f"stage {s} computed {computed}, rank 0 launched {launched}"
        if max_rows:  # double buffers: the next receive was posted before each micro-batch computed
            assert all(posted[:-1]), posted
    assert all(len(ids) == 3 for ids in tokens.values()), tokens


@pytest.mark.parametrize("world,depth", [(2, 3), (3, 5)])
def test_over_the_nccl_path_plans_ahead_keep_order_without_deadlock(world, depth):
    """The NCCL path posts the receives of plans already in before computing (``post_ahead``), never one for a
    plan not yet in: with depth > stages nothing deadlocks and every stage computes in launch order."""
    from tests.multiproc import run_ranks

    got = run_ranks(_pipeline, world, depth, 6, None, None, 64, True, timeout=120)
    launched, tokens, stopped = got[0]
    assert not stopped and len(launched) > depth
    for s in range(1, world):
        assert got[s][0] == launched, f"stage {s} computed {got[s][0]}, rank 0 launched {launched}"
    assert all(len(ids) == 3 for ids in tokens.values()), tokens


class _Inbox:
    """The plan inbox of a stage, holding the plans that have arrived."""

    def __init__(self, plans):
        import queue

        self.plans = queue.Queue()
        for mb in plans:
            self.plans.put(mb)

    def get(self, *, block):
        return self.plans.get(block=block, timeout=None if block else 0)


def _posting_transport(monkeypatch, *, nccl: bool, plans):
    """A stage-1 transport without a process group: ``dist.irecv`` records (rows, peer, tag) instead."""
    from collections import deque

    import torch

    import stages.transport as comm

    t = _bare_transport(1, 60)
    t._nccl, t._stopped, t._posted, t._inbox, t.max_rows = nccl, False, deque(), _Inbox(plans), 64
    t.prev, t.data_group, t.hidden_size, t.dtype, t.device, t.host_staging = 0, None, 3, torch.float32, \
        torch.device("cpu"), False
    posted = []
    monkeypatch.setattr(comm.dist, "irecv", lambda buf, peer, group=None, tag=0: posted.append(
        (buf.shape[0], peer, tag)) or object())
    return t, posted


def _mb(i: int, n: int):
    from pp_runtime.plan import MicroBatch, Piece

    return MicroBatch(i, (Piece(seq_id=i, start=0, token_ids=tuple(range(n)), block_table=(0,), is_prefill=True,
                                sample=True),))


def test_over_nccl_the_next_receives_are_posted_before_the_stage_computes(monkeypatch):
    """Over NCCL, as over gloo, ``post_ahead`` (called before each compute) posts the receive of every plan
    already in, in order and of its exact size; with no plan in it posts nothing (an NCCL receive must match its
    send's size, so the as-large-as-any-micro-batch receive is gloo's alone)."""
    t, posted = _posting_transport(monkeypatch, nccl=True, plans=[])
    t.post_ahead()
    assert posted == []
    t, posted = _posting_transport(monkeypatch, nccl=True, plans=[_mb(1, 5), _mb(2, 7)])
    t.post_ahead()
    assert posted == [(5, 0, 0), (7, 0, 0)]
    assert [entry[0].id for entry in t._posted] == [1, 2]
    t, posted = _posting_transport(monkeypatch, nccl=False, plans=[])
    t.post_ahead()
    assert posted == [(64, 0, 0)]  # gloo: one receive as large as any micro-batch, its plan still on the way


def test_a_stop_mid_flight_drains_what_was_sent_and_ends_every_stage():
    from tests.multiproc import run_ranks

    got = run_ranks(_pipeline, 3, 5, 6, 3, None, 64, timeout=120)
    launched, tokens, stopped = got[0]
    assert stopped and len(launched) >= 3
    # Everything rank 0 sent was computed everywhere and came back: nothing left in flight, nobody hung.
    assert got[1][0] == got[2][0] == launched
    assert any(len(ids) < 3 for ids in tokens.values())


@pytest.mark.parametrize("world,stage", [(2, 1), (3, 1), (3, 2)])
def test_a_stage_failing_while_receives_are_posted_is_named_by_every_rank(world, stage):
    from tests.multiproc import run_ranks_outcomes

    outcomes = run_ranks_outcomes(_pipeline, world, world + 2, 6, None, (stage, 2), 64, timeout=120)
    for o in outcomes:
        assert o.exitcode not in (0, None), f"rank {o.rank} exited {o.exitcode}"
        assert f"stage {stage}" in o.error, f"rank {o.rank}: {o.error}"
    assert f"injected failure on stage {stage}" in outcomes[stage].error


def _plans(rank: int, world: int, plans: list):
    """Rank 0 sends each plan ahead to the other ranks; each returns what it received, in order."""
    import datetime

    import torch
    import torch.distributed as dist

    from pp_runtime.trace.tracer import Tracer
    from stages.transport import Transport

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        t = Transport(rank, world, device=torch.device("cpu"), hidden_size=3, dtype=torch.float32, timeout_s=60,
                      tracer=Tracer(rank, capacity=64, enabled=False, device=torch.device("cpu")))
        got = []
        if rank == 0:
            for mb in plans:
                t.send_plan(mb)
                t.send_activation(mb.id, torch.full((mb.num_tokens, 3), float(mb.id)))
            t.send_stop()
        else:
            while (item := t.recv_micro_batch()) is not None:
                got.append(item)
        t.flush()
        return got
    finally:
        dist.destroy_process_group()


def test_plans_inside_the_header_and_too_large_for_it_both_arrive():
    import torch

    from pp_runtime.plan import MicroBatch, Piece
    from tests.multiproc import run_ranks

    def mb(i: int, n: int) -> MicroBatch:
        return MicroBatch(i, (Piece(seq_id=i, start=0, token_ids=tuple(range(n)), block_table=tuple(range(n)),
                                    is_prefill=True, sample=True),))

    plans = [mb(0, 2), mb(1, 3000), mb(2, 1)]  # the second pickles to ~50 KB: sent after its header
    got = run_ranks(_plans, 2, plans)[1]
    assert [m for m, _ in got] == plans
    for m, tensor in got:
        assert torch.equal(tensor, torch.full((m.num_tokens, 3), float(m.id)))


class _NeverDone:
    """An NCCL work whose peer died: never completes, and its own wait would return at once."""

    def is_completed(self):
        return False

    def wait(self, timeout=None):
        raise AssertionError("an NCCL wait must be polled, not waited on")


def _bare_transport(rank: int, timeout_s: float):
    import threading

    from stages.transport import Transport

    t = Transport.__new__(Transport)  # no process group: only the wait logic is under test
    t.rank, t.timeout_s, t._inbox, t._abort_cause, t._aborted = rank, timeout_s, None, None, threading.Event()
    return t


def test_an_nccl_wait_honours_the_timeout_and_names_the_peer(monkeypatch):
    import stages.transport as comm

    monkeypatch.setattr(comm, "failure_message", lambda: None)
    with pytest.raises(comm.PipelineError, match=r"stage 2: failed to receive activations from stage 1 within "
                                                 r"runtime\.timeout_s=0\.2s.*stage 1 failed or hangs"):
        _bare_transport(2, 0.2)._wait(_NeverDone(), "receive activations from", 1, poll=True)


def test_an_nccl_wait_names_the_stage_that_failed_before_the_timeout(monkeypatch):
    import time

    import stages.transport as comm

    monkeypatch.setattr(comm, "failure_message", lambda: "stage 3 failed: InjectedFailure: boom")
    t0 = time.monotonic()
    with pytest.raises(comm.PipelineError, match="stage 2: aborting, stage 3 failed: InjectedFailure: boom"):
        _bare_transport(2, 60)._wait(_NeverDone(), "receive activations from", 1, poll=True)
    assert time.monotonic() - t0 < 30  # well before runtime.timeout_s


class _Copy:
    """A CUDA event standing for a device-to-host copy: done once ``ready`` says so."""

    def __init__(self, ready: list):
        self.ready, self.synchronized = ready, False

    def query(self):
        return self.ready[0]

    def synchronize(self):
        self.synchronized = True


def test_host_staged_sends_are_posted_once_their_copy_has_run_and_in_order(monkeypatch):
    """gloo on CUDA: ``send_activation`` no longer waits for the GPU; the send goes once the copy has run, or
    when the rank is about to block (then it waits for the copy)."""
    from collections import deque

    t = _bare_transport(1, 60)
    t.next, t.data_group, t._staged = 2, None, deque()
    posted = []
    monkeypatch.setattr(t, "_isend", lambda tensor, peer, group, tag, what: posted.append(tensor), raising=False)
    first, second = [False], [False]
    t._staged.extend([(_Copy(first), "a", 0), (_Copy(second), "b", 1)])
    t._post_staged(block=False)
    assert posted == []  # neither copy has run: the host does not wait
    second[0] = True
    t._post_staged(block=False)
    assert posted == []  # the second is done, but sends keep their order
    first[0] = True
    t._post_staged(block=False)
    assert posted == ["a", "b"] and not t._staged
    third = _Copy([False])
    t._staged.append((third, "c", 2))
    t._drain_staged()  # about to block: the copy is waited for and its send posted
    assert posted == ["a", "b", "c"] and third.synchronized


def test_ranks_sharing_a_gpu_size_their_cache_from_their_share():
    from launch.rank_job import device_share_gib

    # One GPU, two stages (the lent machine's host-staged runs): each rank gets half, not 0.9 of the whole each.
    assert device_share_gib(140.0, local_rank=0, local_world_size=2, gpu_count=1) == 70.0
    assert device_share_gib(140.0, local_rank=1, local_world_size=2, gpu_count=1) == 70.0
    # Three ranks on two GPUs: cuda:0 holds ranks 0 and 2, cuda:1 rank 1 alone.
    assert device_share_gib(80.0, local_rank=2, local_world_size=3, gpu_count=2) == 40.0
    assert device_share_gib(80.0, local_rank=1, local_world_size=3, gpu_count=2) == 80.0
    # One rank per GPU: the whole GPU.
    assert device_share_gib(80.0, local_rank=3, local_world_size=4, gpu_count=4) == 80.0
