"""The start-up profile of a stage (stages/profiler.py): every shape runs untimed before any shape is timed."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pp_runtime.planner.cost_model import profile_points
from stages import profiler


class _Executor:
    """Records which micro-batch shapes it ran, in order, interleaved with the profiler's clock reads."""

    def __init__(self, log: list, *, first: bool):
        self.log = log
        self.cache = SimpleNamespace(num_blocks=64, block_size=16)
        self.model = SimpleNamespace(is_first=first)
        self.device = torch.device("cpu")
        self.head_split = None  # the LM head is whole on the last stage

    def execute(self, mb, hidden=None):
        assert (hidden is None) == self.model.is_first
        self.log.append(("run", tuple((len(p.token_ids), p.start + len(p.token_ids)) for p in mb.pieces)))


def test_every_shape_is_warmed_before_the_first_timing(monkeypatch):
    log: list = []
    clock = iter(range(10_000))
    monkeypatch.setattr(profiler.time, "perf_counter", lambda: (log.append(("clock",)), next(clock))[1])
    for first in (True, False):
        log.clear()
        rows = profiler.profile_stage(1, _Executor(log, first=first), token_budget=64, max_context_len=300,
                                      hidden_size=8, dtype=torch.float32)
        shapes = [tuple(map(tuple, s)) for s in profile_points(64, max_context_len=300)]
        assert len(rows) == len(shapes) > 3 and all(r[0] == 1 and r[-1] == 1 for r in rows)
        first_clock = log.index(("clock",))
        warmed = [entry[1] for entry in log[:first_clock]]
        assert warmed == shapes  # each shape once, before any timing
        timed = [entry[1] for entry in log[first_clock:] if entry[0] == "run"]
        assert timed == shapes


def test_stage_0_times_its_half_of_a_split_head_with_each_shape(monkeypatch):
    log: list = []
    clock = iter(range(10_000))
    monkeypatch.setattr(profiler.time, "perf_counter", lambda: (log.append(("clock",)), next(clock))[1])
    executor = _Executor(log, first=True)
    executor.head_split = object()  # any split: stage 0 then runs its half of the head on the sampled rows

    def head_logits(normed):
        log.append(("head", normed.shape[0]))
        return torch.zeros(normed.shape[0], 4)

    executor.model.head_logits = head_logits
    profiler.profile_stage(0, executor, token_budget=64, max_context_len=300, hidden_size=8, dtype=torch.float32)
    first_clock = log.index(("clock",))
    timed = log[first_clock:]
    # Between each pair of clock reads: the shape's layers, then the head on one row per piece (every piece samples).
    for start in range(0, len(timed), 4):
        clock_a, run, head, clock_b = timed[start:start + 4]
        assert clock_a == clock_b == ("clock",) and run[0] == "run" and head == ("head", len(run[1]))


def test_the_profile_is_described_by_its_shapes_tokens_and_longest_context():
    shapes = profiler.profile_shapes(64, max_context_len=5000, cache_tokens=1024)  # the cache caps the context
    assert shapes == profile_points(64, max_context_len=1024)
    assert profiler.describe_profile(shapes) == (f"{len(shapes)} micro-batch shapes (each run twice: warm-up, then "
                                                 f"timed) of up to 64 tokens, contexts up to 1024 tokens")
