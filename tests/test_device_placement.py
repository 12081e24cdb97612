"""Several GPUs, one rank each, checked on the CPU with torch.cuda stubbed: a rank makes its own GPU current before
any CUDA call, and CUDA graphs name their device for streams, pool, capture and replay. Also: the CPU suite stays
on the CPU on a GPU machine unless ``-m gpu`` asks for the GPU tests (tests/conftest.py hides CUDA)."""

from __future__ import annotations

import contextlib
import os
import types

import pytest
import torch

from tests.conftest import gpu_session
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model, write_jsonl

# What the code under test may call in torch.cuda; each stub records (name, device or None).
_STUBBED = ("set_device", "current_device", "synchronize", "init", "Stream", "Event", "current_stream",
            "graph_pool_handle", "get_device_properties", "empty_cache", "manual_seed", "mem_get_info")


def _stub_cuda(monkeypatch, calls: list, *, gpus: int) -> None:
    def recorder(name):
        def call(*args, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            calls.append((name, None if device is None else torch.device(device)))
            if name == "get_device_properties":  # the job sizes the default KV cache from the GPU's memory
                return types.SimpleNamespace(total_memory=80 * 2**30)
            return _FakeStream() if name in ("Stream", "current_stream") else None
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for name in _STUBBED:
        monkeypatch.setattr(torch.cuda, name, recorder(name))


class _FakeStream:
    def wait_stream(self, other):
        pass


def test_a_rank_sets_its_device_from_local_rank_before_any_cuda_call(tmp_path, monkeypatch):
    import stages.runtime
    from launch.rank_job import run_job

    model = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    reqs = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt_token_ids": [3, 4], "max_tokens": 2}])
    cfg = make_config([f"model.path={model}", "workload=jsonl", f"workload.path={reqs}", "device=cuda",
                       "model.attention=sdpa", f"output_dir={tmp_path / 'out'}", "runtime.progress=false"])
    calls: list = []
    _stub_cuda(monkeypatch, calls, gpus=4)
    monkeypatch.setattr(stages.runtime, "run_stage", lambda plan, stop=None: calls.append(("run_stage", plan.device)))
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    run_job(cfg)
    cuda3 = torch.device("cuda", 3)
    assert calls[0] == ("set_device", cuda3), calls  # the first CUDA call of the rank
    assert calls[-1] == ("run_stage", cuda3)  # then the stage is built on that device


class _FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def test_cuda_graphs_name_their_device(monkeypatch):
    # Capture and replay on cuda:1 while cuda:0 is current: every stream, the pool, the capture and the replay
    # must run under cuda:1 (streams created with device=cuda:1, inside torch.cuda.device(cuda:1)).
    from stages.cuda_graphs import CudaGraphs, StaticBuffers, graph_buckets

    calls: list = []
    _stub_cuda(monkeypatch, calls, gpus=2)
    current = [torch.device("cuda", 0)]

    @contextlib.contextmanager
    def device(dev):
        calls.append(("device", torch.device(dev)))
        current.append(torch.device(dev))
        yield
        current.pop()

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None):
        calls.append(("graph", current[-1]))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    cuda1 = torch.device("cuda", 1)
    buf = StaticBuffers.allocate(4, table_width=2, hidden_size=8, dtype=torch.float32, device=torch.device("cpu"))
    seen_devices = []
    graphs = CudaGraphs(lambda inputs, x: (seen_devices.append(current[-1]), x * 2)[1], buf,
                        buckets=graph_buckets(4), block_size=16, scratch_block=0, device=cuda1)
    graphs.capture()
    assert set(seen_devices) == {cuda1}  # warm-up and capture ran with cuda:1 current
    streams = [dev for name, dev in calls if name in ("Stream", "current_stream")]
    assert streams and set(streams) == {cuda1}
    assert {dev for name, dev in calls if name == "graph"} == {cuda1}
    calls.clear()
    from stages.inputs import StageInputs

    one = StageInputs(num_tokens=1, positions=torch.zeros(1, dtype=torch.int64),
                      slot_mapping=torch.zeros(1, dtype=torch.int64), cu_seqlens_q=torch.tensor([0, 1]),
                      context_lens=torch.ones(1, dtype=torch.int32), block_tables=torch.zeros(1, 1, dtype=torch.int32),
                      max_q=1, max_context=1)
    graphs.run(one, torch.ones(1, 8))
    replayed = [graph.replays for graph, _ in graphs.graphs.values()]
    assert calls == [("device", cuda1)] and sorted(replayed) == [0] * (len(replayed) - 1) + [1]


@pytest.mark.parametrize("markexpr,gpu", [("", False), ("gpu", True), ("not gpu", False), ("gpu and not slow", True)])
def test_gpu_tests_only_when_asked(markexpr, gpu):
    assert gpu_session(markexpr) is gpu


def test_this_cpu_session_hides_cuda():
    # conftest hides the GPUs for the CPU suite (this test is not gpu-marked, so the session is a CPU one): every
    # job of the suite, forked, spawned or launched by torchrun, resolves device=auto to the CPU and float32, and
    # no forked rank inherits an initialised CUDA context.
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert os.environ["TRITON_INTERPRET"] == "1"
    assert not torch.cuda.is_available()
