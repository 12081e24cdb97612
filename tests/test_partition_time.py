"""Layer split from a per-layer time model: optimal against brute force, and used only where it predicts better
than the head-share heuristic."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pp_runtime.model.partition import choose_split, partition_by_time, partition_layers
from pp_runtime.sim.hardware import GPUS, MODEL_SHAPES
from pp_runtime.sim.parts import PartTimes, total_parts
from pp_runtime.sim.roofline import RooflineParts


def _brute_force(num_layers: int, num_stages: int, parts: PartTimes) -> float:
    best = float("inf")
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        bounds = (0, *cuts, num_layers)
        best = min(best, max(parts.stage_times([b - a for a, b in itertools.pairwise(bounds)])))
    return best


def _bottleneck(ranges: list[range], parts: PartTimes) -> float:
    return max(parts.stage_times([len(r) for r in ranges]))


@given(num_layers=st.integers(1, 12), num_stages=st.integers(1, 5),
       layer=st.floats(0.01, 10), embed=st.floats(0, 30), head=st.floats(0, 30), fixed=st.floats(0, 5))
def test_partition_by_time_is_optimal(num_layers, num_stages, layer, embed, head, fixed):
    num_stages = min(num_stages, num_layers)
    parts = PartTimes(fixed, layer, embed, head)
    ranges = partition_by_time(num_layers, num_stages, parts)
    assert [i for r in ranges for i in r] == list(range(num_layers)) and all(len(r) >= 1 for r in ranges)
    assert _bottleneck(ranges, parts) == pytest.approx(_brute_force(num_layers, num_stages, parts), rel=1e-9)


def test_a_dear_embedding_moves_layers_off_stage_0():
    # Embedding worth 3 layers, head worth 1: 8 layers on 2 stages -> 3 + 3 | 5 + 1 (bottleneck 6, not 4+3=7).
    ranges = partition_by_time(8, 2, PartTimes(0.0, 1.0, 3.0, 1.0))
    assert [len(r) for r in ranges] == [3, 5]


@given(num_layers=st.integers(2, 12), num_stages=st.integers(2, 4), head_cost=st.floats(0, 4),
       layer=st.floats(0.01, 10), embed=st.floats(0, 30), head=st.floats(0, 30))
def test_choose_split_never_predicts_worse_than_the_heuristic(num_layers, num_stages, head_cost, layer, embed, head):
    num_stages = min(num_stages, num_layers)
    parts = PartTimes(0.0, layer, embed, head)
    heuristic = partition_layers(num_layers, num_stages, head_cost=head_cost)
    ranges, rule = choose_split(num_layers, num_stages, head_cost=head_cost, parts=parts)
    assert _bottleneck(ranges, parts) <= _bottleneck(heuristic, parts)
    assert rule == ("time" if ranges != heuristic else "heuristic")
    if rule == "time":
        assert _bottleneck(ranges, parts) < _bottleneck(heuristic, parts)


def test_choose_split_keeps_the_heuristic_without_a_model_or_when_it_ties():
    assert choose_split(30, 2, head_cost=2.0) == (partition_layers(30, 2, head_cost=2.0), "heuristic")
    # A model that agrees with the heuristic (no embedding cost, head worth 2 layers) changes nothing.
    agree = PartTimes(0.5, 1.0, 0.0, 2.0)
    assert choose_split(30, 2, head_cost=2.0, parts=agree) == (partition_layers(30, 2, head_cost=2.0), "heuristic")


def test_roofline_split_of_a_decode_heavy_mix_unloads_the_lm_head_stage():
    # llama-3.2-1b: a 128k x 2048 LM head read per decode micro-batch outweighs one decoder layer on A100.
    source = RooflineParts(MODEL_SHAPES["llama-3.2-1b"], GPUS["a100"])
    mix = [[(1, 512)] * 32] * 10
    parts = total_parts(source, mix)
    assert parts.head > parts.layer
    ranges, rule = choose_split(16, 2, head_cost=0.0, parts=parts)
    assert rule == "time" and len(ranges[-1]) < len(ranges[0])
