"""Hand-written scenarios, one defining behaviour each, for every planner policy."""

from __future__ import annotations

import itertools

import pytest

from pp_runtime.config import SchedulerConfig
from pp_runtime.planner import CostModel, make_planner
from pp_runtime.planner.fill import full_budget_time
from pp_runtime.planner.loop import drive
from pp_runtime.request import Request, SamplingParams
from pp_runtime.sequence import SeqStatus


def req(i: int, prompt_len: int, max_tokens: int = 4, arrival_s: float = 0.0) -> Request:
    return Request(f"r{i}", tuple(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens), arrival_s)


def run(policy: str, requests: list[Request], *, num_slots: int = 1, num_blocks: int = 4096, block_size: int = 4,
        cost_model: CostModel | None = None, **sched):
    """Drive the policy to completion; returns the planner and every micro-batch as (slot, mb) in launch order."""
    planner = make_planner(SchedulerConfig(policy=policy, **sched), num_blocks=num_blocks, block_size=block_size,
                           num_slots=num_slots, max_model_len=4096, cost_model=cost_model)
    for r in requests:
        planner.add_request(r)
    mbs = []
    drive(planner, lambda piece: 7, on_schedule=lambda mb: mbs.append((getattr(planner, "slot_of", {}).get(mb.id), mb)))
    assert all(s.status is SeqStatus.FINISHED and len(s.output_token_ids) == s.request.params.max_tokens
               for s in planner.seqs)
    return planner, mbs


def pieces_of(mbs, seq_id: int):
    return [p for _, mb in mbs for p in mb.pieces if p.seq_id == seq_id]


# ---- orca -----------------------------------------------------------------------------------------------------
def test_orca_never_chunks_and_runs_a_prompt_longer_than_the_budget_alone():
    _, mbs = run("orca", [req(0, 4, max_tokens=5), req(1, 20)], token_budget=8)
    long = pieces_of(mbs, 1)[0]
    assert (long.start, long.num_tokens, long.sample) == (0, 20, True)
    k = next(i for i, (_, mb) in enumerate(mbs) if long in mb.pieces)
    assert len(mbs[k][1].pieces) == 1  # alone: the budget is exceeded only by one whole prompt
    assert all(p.start == 0 and p.sample for _, mb in mbs for p in mb.pieces if p.is_prefill)
    assert [mb.num_tokens for _, mb in mbs[:2]] == [4, 1]  # decodes carry on while the long prompt waits


def test_orca_batches_decodes_with_whole_new_prompts():
    _, mbs = run("orca", [req(0, 3, max_tokens=3), req(1, 15, arrival_s=0.0015)], token_budget=16)
    assert repr(mbs[1][1]) == "MB#1[d0@3+1*]"
    assert repr(mbs[2][1]) == "MB#2[d0@4+1* p1@0+15*]"  # fills the budget exactly


# ---- vllm -----------------------------------------------------------------------------------------------------
def test_vllm_prefills_first_and_never_mixes():
    _, mbs = run("vllm", [req(0, 8, max_tokens=6), req(1, 8, arrival_s=0.0025)], token_budget=64)
    assert all(len({p.is_prefill for p in mb.pieces}) == 1 for _, mb in mbs)
    # Launches at t = 0, 1, 2, 3 ms: request 1 arrives at 2.5 ms and its prefill goes next, decodes wait.
    assert [repr(mb) for _, mb in mbs[:4]] == ["MB#0[p0@0+8*]", "MB#1[d0@8+1*]", "MB#2[d0@9+1*]", "MB#3[p1@0+8*]"]


# ---- static ---------------------------------------------------------------------------------------------------
def test_static_admits_nothing_until_the_batch_finishes():
    planner, mbs = run("static", [req(0, 4, max_tokens=3), req(1, 4, max_tokens=6), req(2, 4, max_tokens=2)],
                       token_budget=64, max_num_seqs=2)
    assert repr(mbs[0][1]) == "MB#0[p0@0+4* p1@0+4*]"  # the batch's prompts, whole, together
    first_of_2 = next(i for i, (_, mb) in enumerate(mbs) if any(p.seq_id == 2 for p in mb.pieces))
    last_of_1 = max(i for i, (_, mb) in enumerate(mbs) if any(p.seq_id == 1 for p in mb.pieces))
    assert first_of_2 > last_of_1
    assert planner.seqs[2].first_token_s > planner.seqs[1].finish_s - 1e-12


# ---- sarathi: chunking, stall-free, tiles ---------------------------------------------------------------------
def test_sarathi_chunks_prompts_and_piggybacks_decodes():
    _, mbs = run("sarathi", [req(0, 4, max_tokens=20), req(1, 100)], token_budget=32, chunk_size=32)
    assert [repr(mb) for _, mb in mbs[:3]] == ["MB#0[p0@0+4* p1@0+28]", "MB#1[d0@4+1* p1@28+31]",
                                               "MB#2[d0@5+1* p1@59+31]"]
    chunks = [p for p in pieces_of(mbs, 1) if p.is_prefill]
    assert sum(p.num_tokens for p in chunks) == 100 and all(p.num_tokens <= 32 for p in chunks)
    assert all(mb.num_tokens <= 32 for _, mb in mbs)


def test_sarathi_is_stall_free_across_slots():
    requests = [req(i, 6, max_tokens=12) for i in range(6)] + [req(9, 400, arrival_s=0.002)]
    _, mbs = run("sarathi", requests, num_slots=3, token_budget=24, chunk_size=24)
    busy = max(k for k, (_, mb) in enumerate(mbs) for p in mb.pieces if p.seq_id < 6)
    assert [slot for slot, _ in mbs[:busy]] == [k % 3 for k in range(busy)]  # slots take turns
    # Every decoding request appears in every micro-batch of its slot until it finishes.
    for i in range(6):
        mine = [k for k, (_, mb) in enumerate(mbs) if any(p.seq_id == i and not p.is_prefill for p in mb.pieces)]
        assert mine == list(range(mine[0], mine[0] + 3 * len(mine), 3)), i
    assert sum(1 for p in pieces_of(mbs, 6) if p.is_prefill) >= 400 // 24


def test_sarathi_tile_rounds_the_micro_batch_down_to_a_multiple():
    requests = [req(0, 2, 10), req(1, 2, 10), req(2, 2, 10), req(3, 300)]
    _, mbs = run("sarathi", requests, token_budget=100, chunk_size=256, tile=16)
    assert [mb.num_tokens for _, mb in mbs[:3]] == [96, 96, 96]  # 6 + 90, then 3 decodes + 93
    assert all(mb.num_tokens <= 100 for _, mb in mbs)


def test_sarathi_tile_never_rounds_a_chunk_to_nothing():
    _, mbs = run("sarathi", [req(0, 300, max_tokens=1)], token_budget=100, chunk_size=256, tile=128)
    assert [mb.num_tokens for _, mb in mbs] == [100, 100, 100]


# ---- sarathi: time balance and SLO ----------------------------------------------------------------------------
ATTN_HEAVY = CostModel(c0=(1e-3,), c_tok=(1e-5,), c_attn=(1e-7,), c_dec=(1e-7,))


def test_time_balancing_gives_later_chunks_fewer_tokens():
    _, mbs = run("sarathi", [req(0, 1000, max_tokens=1)], token_budget=64, chunk_size=64, cost_model=ATTN_HEAVY)
    sizes = [mb.num_tokens for _, mb in mbs]
    assert sizes[0] == 64 and sizes[-1] < sizes[0] // 4
    assert sizes == sorted(sizes, reverse=True)
    target = full_budget_time(ATTN_HEAVY, 64, 64)
    assert all(ATTN_HEAVY.predict_max(mb.pieces) <= target + 1e-12 for _, mb in mbs)
    # Without balancing the same prompt goes in equal-token chunks.
    _, flat = run("sarathi", [req(0, 1000, max_tokens=1)], token_budget=64, chunk_size=64, cost_model=ATTN_HEAVY,
                  time_balanced=False)
    assert {mb.num_tokens for _, mb in flat[:-1]} == {64}


def test_slo_caps_predicted_time_and_a_decode_always_fits():
    slo_ms = 1.5
    _, mbs = run("sarathi", [req(0, 4, max_tokens=30), req(1, 500, max_tokens=2)], token_budget=256,
                 chunk_size=256, cost_model=ATTN_HEAVY, tbt_slo_ms=slo_ms)
    assert all(ATTN_HEAVY.predict_max(mb.pieces) <= slo_ms / 1e3 for _, mb in mbs)
    assert max(mb.num_tokens for _, mb in mbs) < 256
    # An SLO below the fixed cost: every micro-batch shrinks to one token, and everything still finishes.
    _, tiny = run("sarathi", [req(0, 3, max_tokens=3), req(1, 5, max_tokens=2)], token_budget=64,
                  cost_model=ATTN_HEAVY, tbt_slo_ms=0.1)
    assert {mb.num_tokens for _, mb in tiny} == {1}


def test_slo_needs_a_cost_model():
    with pytest.raises(ValueError, match="scheduler.tbt_slo_ms=5"):
        make_planner(SchedulerConfig(tbt_slo_ms=5), num_blocks=8, block_size=4, num_slots=1, max_model_len=64)


# ---- sarathi: slots -------------------------------------------------------------------------------------------
def test_requests_are_pinned_to_the_emptiest_slot():
    planner = make_planner(SchedulerConfig(token_budget=64), num_blocks=64, block_size=4, num_slots=4,
                           max_model_len=64)
    for i in range(10):
        planner.add_request(req(i, 2))
    planner.schedule(0.0)
    assert planner.slots.counts() == [3, 3, 2, 2]
    assert [s.slot for s in planner.seqs] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_slots_are_rebalanced_when_requests_finish():
    requests = [req(0, 2, 1), req(1, 2, 30), req(2, 2, 1), req(3, 2, 30)]
    _, mbs = run("sarathi", requests, num_slots=2, token_budget=64)
    # Requests 0 and 2 (slot 0) finish at once; request 3 moves over, so each micro-batch keeps one decode.
    assert repr(mbs[0][1]) == "MB#0[p0@0+2* p1@0+2* p2@0+2* p3@0+2*]"
    assert all(mb.num_decode_tokens == 1 for _, mb in mbs[1:-1])
    assert len(mbs) == 1 + 2 * 29


# ---- sharing, memory, fairness --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["sarathi", "fcfs", "orca", "vllm"])
def test_the_most_recently_admitted_request_is_preempted_and_recomputed(policy):
    planner, mbs = run(policy, [req(0, 4, max_tokens=8), req(1, 4, max_tokens=8)], num_blocks=4, block_size=4,
                       token_budget=16)
    assert planner.seqs[0].num_preemptions == 0 and planner.seqs[1].num_preemptions >= 1
    recompute = next(p for p in pieces_of(mbs, 1) if p.is_prefill and p.start == 0 and p.step > 0)
    assert recompute.token_ids[:4] == (1, 2, 3, 4) and set(recompute.token_ids[4:]) == {7}


@pytest.mark.parametrize("policy", ["sarathi", "fcfs"])
def test_a_long_prompt_among_many_short_ones_finishes(policy):
    requests = [req(0, 600, max_tokens=3, arrival_s=0.001)]
    requests += [req(i, 8, max_tokens=4, arrival_s=i * 0.0005) for i in range(1, 60)]
    planner, mbs = run(policy, requests, num_slots=2, token_budget=32, chunk_size=32)
    assert planner.seqs[0].finish_reason == "length"
    # However many short requests queue behind it, its next chunk goes into the very next micro-batch under
    # sarathi (chunk pipelining), and into the first one launched after the previous chunk is back (a pipeline
    # round apart) under fcfs.
    launches = [k for k, (_, mb) in enumerate(mbs) for p in mb.pieces if p.seq_id == 0 and p.is_prefill]
    assert len(launches) >= 600 // 32
    assert {b - a for a, b in itertools.pairwise(launches)} == {1 if policy == "sarathi" else 2}


def test_arrivals_are_served_in_arrival_order():
    requests = [req(0, 4, 1, arrival_s=0.003), req(1, 4, 1, arrival_s=0.001), req(2, 4, 1, arrival_s=0.002)]
    _, mbs = run("fcfs", requests, token_budget=4)
    assert [mb.pieces[0].seq_id for _, mb in mbs] == [1, 2, 0]


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match=r"scheduler.policy='lifo'.*sarathi"):
        make_planner(SchedulerConfig(policy="lifo"), num_blocks=8, block_size=4, num_slots=1, max_model_len=64)


def test_throttle_spreads_a_burst_of_prompts_over_the_micro_batches_in_flight():
    # 8 prompts of 24 tokens at once, budget 64, 4 slots: sarathi packs the first micro-batches full; throttle gives
    # each micro-batch about pending / 4 prefill tokens, so the prompts' work reaches all four slots.
    requests = [req(i, 24, max_tokens=2) for i in range(8)]
    _, sar = run("sarathi", requests, num_slots=4, token_budget=64, chunk_size=64)
    planner, thr = run("throttle", requests, num_slots=4, token_budget=64, chunk_size=64)
    assert [mb.num_prefill_tokens for _, mb in sar[:4]] == [64, 64, 64, 0]
    first = [mb.num_prefill_tokens for _, mb in thr[:4]]
    assert first[0] == 48 and all(0 < n < 64 for n in first)  # 192 pending / 4 slots
    assert all(s.finish_reason == "length" for s in planner.seqs)


def test_throttle_slows_prefill_as_the_kv_cache_fills():
    from pp_runtime.sequence import Sequence

    def first_prefill(hog_tokens: int) -> int:
        planner = make_planner(SchedulerConfig(policy="throttle", token_budget=64, chunk_size=64), num_blocks=1000,
                               block_size=4, num_slots=2, max_model_len=4096)
        planner.blocks.allocate(Sequence(99, req(99, 1)), hog_tokens)  # another request's cache
        planner.add_request(req(0, 40, max_tokens=1))
        return planner.schedule(0.0).num_prefill_tokens

    # 40 pending tokens over 2 slots: 20 per micro-batch; with 10% of the cache free (below KV_FREE = 25%): 40% of it.
    assert first_prefill(0) == 20 and first_prefill(3600) == 8


def test_a_preemption_takes_the_latest_arrival_not_the_latest_admission():
    # A, B, C arrive in that order; C is admitted before B (as the fair order, or a readmission after an eviction,
    # may do). When A grows into a full cache, the victim is C, the latest to arrive: B, admitted last, may be an
    # early request readmitted after an eviction, which would then be evicted again and again.
    planner = make_planner(SchedulerConfig(policy="fcfs", token_budget=64, chunk_size=64), num_blocks=6,
                           block_size=4, num_slots=1, max_model_len=128)
    a, b, c = (planner.add_request(Request(name, (3,) * 8, SamplingParams(max_tokens=4), arrival_s=t))
               for name, t in (("a", 0.0), ("b", 0.1), ("c", 0.2)))
    planner._release_arrivals(1.0)
    for seq in (a, c, b):
        assert planner._admit(seq, 8, take=False)
    assert planner.blocks.num_free == 0
    assert planner._reserve(a, 12)  # one more block: someone younger goes
    assert c.status is SeqStatus.WAITING and c.num_preemptions == 1
    assert b.status is SeqStatus.RUNNING and b.num_preemptions == 0
