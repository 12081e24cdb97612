"""The pipeline simulator against textbook pipeline timelines: fill, steady state, drain, link latency."""

from __future__ import annotations

import numpy as np
import pytest

from pp_runtime.config import ConfigError
from pp_runtime.planner import CostModel
from pp_runtime.request import Request, SamplingParams
from pp_runtime.sim import LinkModel, simulate
from pp_runtime.trace.bubbles import compute_bubbles
from pp_runtime.trace.tracer import EventKind
from tests.jobs import make_config

MS = 1_000_000  # ns
PROMPT = 8


class ConstantTimes:
    """Every micro-batch takes ``times[s]`` seconds on stage s, whatever it holds."""

    def __init__(self, times: list[float]):
        self.times = list(times)
        self.num_stages = len(times)
        self.calls = 0

    def predict(self, pieces) -> list[float]:
        self.calls += 1
        return list(self.times)


def _cfg(stages: int, depth: int, *extra: str):
    # fcfs with a budget of one prompt: every micro-batch is one whole prefill that samples the request's only token.
    return make_config([f"pipeline.stages={stages}", f"pipeline.num_microbatches={depth}", "scheduler=fcfs",
                        f"scheduler.token_budget={PROMPT}", f"scheduler.chunk_size={PROMPT}",
                        "sim.planner_time_us=0", *extra])


def _requests(m: int, max_tokens: int = 1) -> list[Request]:
    return [Request(f"r{i}", (5,) * PROMPT, SamplingParams(max_tokens=max_tokens)) for i in range(m)]


def _run(cfg, requests, times, *, links=None, hidden_size=4):
    return simulate(cfg, requests, time_model=ConstantTimes(times), links=links, hidden_size=hidden_size,
                    dtype_bytes=4, max_model_len=256, num_blocks=1024)


def _compute_starts(events: np.ndarray) -> dict[int, int]:
    compute = events[events[:, 0] == EventKind.COMPUTE]
    return {int(mb): int(start) for mb, start in zip(compute[:, 3], compute[:, 1])}


@pytest.mark.parametrize("n,m", [(2, 2), (3, 5), (4, 8), (5, 3)])
def test_constant_times_reproduce_the_textbook_fill_drain_timeline(n, m):
    t = 3 * MS
    res = _run(_cfg(n, max(n, m)), _requests(m), [t / 1e9] * n)
    assert [mb.id for mb in res.micro_batches] == list(range(m))
    for s in range(n):
        assert _compute_starts(res.events[s]) == {k: (s + k) * t for k in range(m)}
    makespan = max(int(ev[ev[:, 0] == EventKind.COMPUTE][:, 2].max()) for ev in res.events.values())
    assert makespan == (n + m - 1) * t
    assert res.metrics["duration_s"] * 1e9 == pytest.approx(makespan, abs=1)
    bubbles = compute_bubbles(res.events)
    for s in range(n):
        assert bubbles["stages"][str(s)]["bubble_fraction"] == pytest.approx((n - 1) / (n + m - 1), abs=1e-12)
        assert bubbles["stages"][str(s)]["steady_s"] == 0
    assert res.metrics["completed"] == m and res.metrics["total_output_tokens"] == m


def test_a_stage_twice_as_slow_is_never_idle_in_steady_state():
    t = 2 * MS
    times = [t / 1e9, 2 * t / 1e9, t / 1e9]
    res = _run(_cfg(3, 6), _requests(24, max_tokens=4), times)
    stages = compute_bubbles(res.events)["stages"]
    assert stages["1"]["steady_s"] == 0 and stages["1"]["num_microbatches"] > 24
    assert stages["0"]["steady_s"] > 0 and stages["2"]["steady_s"] > 0  # the others wait for the bottleneck


def test_link_latency_shifts_stage_s_by_s_latencies():
    n, m, t, lat = 4, 6, 2 * MS, 300_000
    res = _run(_cfg(n, m), _requests(m), [t / 1e9] * n, links=LinkModel.uniform(n, latency_s=lat / 1e9))
    for s in range(n):
        assert _compute_starts(res.events[s]) == {k: (s + k) * t + s * lat for k in range(m)}
    # The last token returns one more latency later: the run ends there.
    assert round(res.metrics["duration_s"] * 1e9) == (n + m - 1) * t + n * lat


def test_rendezvous_links_charge_each_hop_once_per_micro_batch():
    # The receiver posts its receive only when free, so latency lands on the critical path of every micro-batch.
    n, m, t, lat = 3, 6, 2 * MS, 300_000
    res = _run(_cfg(n, m), _requests(m), [t / 1e9] * n, links=LinkModel.uniform(n, latency_s=lat / 1e9,
                                                                                 rendezvous=True))
    for s in range(n):
        assert _compute_starts(res.events[s]) == {k: (s + k) * t + (s + k) * lat if s else k * t for k in range(m)}
        if s:
            waits = res.events[s][res.events[s][:, 0] == EventKind.WAIT]
            assert (waits[:, 2] - waits[:, 1] >= lat).all()  # every receive waits at least one latency


def test_send_overhead_keeps_the_sender_busy_before_the_transfer():
    n, m, t, send = 3, 4, 2 * MS, 250_000
    res = _run(_cfg(n, m), _requests(m), [t / 1e9] * n, links=LinkModel.uniform(n, send_s=send / 1e9))
    for s in range(n):
        assert _compute_starts(res.events[s]) == {k: (s + k) * (t + send) for k in range(m)}
        sends = res.events[s][res.events[s][:, 0] == EventKind.SEND]
        assert (sends[:, 2] - sends[:, 1] == send).all() and len(sends) == m


def test_links_fitted_to_a_run_recover_its_latency_and_send_overhead():
    from pp_runtime.sim.replay import measured_links

    n, t, lat, send = 3, 2 * MS, 400_000, 150_000
    links = LinkModel.uniform(n, latency_s=lat / 1e9, send_s=send / 1e9, rendezvous=True)
    res = _run(_cfg(n, n), _requests(12, max_tokens=3), [t / 1e9] * n, links=links)
    fitted = measured_links(res.events, LinkModel.uniform(n))
    for link in (*fitted.hops, fitted.back):
        assert round(link.latency_s * 1e9) == lat and round(link.send_s * 1e9) == send


def test_bandwidth_charges_activation_bytes_per_hop():
    n, t, hidden = 2, MS, 1000
    links = LinkModel.uniform(n, bandwidth_Bps=1e9)  # 1 GB/s: 8 tokens x 1000 x 4 bytes = 32 us
    res = _run(_cfg(n, n), _requests(1), [t / 1e9] * n, links=links, hidden_size=hidden)
    assert _compute_starts(res.events[1]) == {0: t + PROMPT * hidden * 4}


def test_planner_time_is_charged_to_stage_0_before_each_launch():
    n, m, t, plan = 2, 3, MS, 100_000
    res = _run(_cfg(n, m, f"sim.planner_time_us={plan / 1e3}"), _requests(m), [t / 1e9] * n)
    ev0 = res.events[0]
    plans = ev0[(ev0[:, 0] == EventKind.PLAN) & (ev0[:, 3] >= 0)]
    assert (plans[:, 2] - plans[:, 1] == plan).all()
    assert _compute_starts(ev0) == {k: (k + 1) * plan + k * t for k in range(m)}


def test_every_stage_computes_every_micro_batch_once_in_order_and_events_do_not_overlap():
    cfg = make_config(["pipeline.stages=3", "scheduler=sarathi", "scheduler.token_budget=32", "sim.planner_time_us=5",
                       "workload=synthetic"])
    requests = [Request(f"r{i}", tuple(range(2, 2 + 10 + 7 * i)), SamplingParams(max_tokens=3 + i % 5))
                for i in range(12)]
    res = simulate(cfg, requests, time_model=CostModel.default(3), links=LinkModel.uniform(3, latency_s=1e-4),
                   hidden_size=64, dtype_bytes=4, max_model_len=256, num_blocks=256)
    ids = [mb.id for mb in res.micro_batches]
    for s, ev in res.events.items():
        compute = ev[ev[:, 0] == EventKind.COMPUTE]
        assert compute[:, 3].tolist() == ids
        assert (compute[1:, 1] >= compute[:-1, 2]).all()
    assert res.metrics["completed"] == 12
    assert res.metrics["total_output_tokens"] == sum(r.params.max_tokens for r in requests)


def test_time_model_for_another_stage_count_is_a_config_error():
    with pytest.raises(ConfigError, match="pipeline.stages=2"):
        _run(_cfg(2, 2), _requests(1), [1e-3] * 3)


def test_link_kinds_follow_the_node_layout_and_overrides():
    from pp_runtime.config import SimConfig

    gpu = LinkModel.from_config(SimConfig(gpus_per_node=2), 5, cpu=False)
    assert [h.kind for h in gpu.hops] == ["nvlink", "infiniband", "nvlink", "infiniband"]
    assert gpu.back.kind == "infiniband"  # stage 4 (node 2) back to stage 0 (node 0)
    assert gpu.hops[0].bandwidth_Bps > gpu.hops[1].bandwidth_Bps and gpu.hops[0].latency_s < gpu.hops[1].latency_s
    assert {h.kind for h in LinkModel.from_config(SimConfig(), 3, cpu=True).hops} == {"gloo"}
    pcie = LinkModel.from_config(SimConfig(link="pcie", gpu="a100", gpus_per_node=8), 3, cpu=False)
    assert {h.kind for h in pcie.hops} == {"pcie"} and pcie.back.kind == "pcie"
    forced = LinkModel.from_config(SimConfig(link_latency_us=7, link_bandwidth_gbps=2, link_send_overhead_us=3), 2,
                                   cpu=True)
    assert forced.hops[0].transfer_s(2e9) == pytest.approx(7e-6 + 1.0) and forced.hops[0].send_s == pytest.approx(3e-6)


def test_every_gpu_preset_is_a_valid_sim_gpu_with_links_and_a_roofline():
    # The config's list, the roofline presets and the link presets must agree: a preset the README names (h200)
    # was once refused by the config check.
    from pp_runtime.config import SIM_GPUS, SimConfig
    from pp_runtime.sim.hardware import GPUS

    assert set(SIM_GPUS) == set(GPUS)
    for name in SIM_GPUS:
        SimConfig(gpu=name).validate()
        links = LinkModel.from_config(SimConfig(gpu=name, gpus_per_node=2), 3, cpu=False)
        assert [h.kind for h in links.hops] == ["nvlink", "infiniband"]
    h200 = LinkModel.from_config(SimConfig(gpu="h200"), 2, cpu=False)
    assert h200 == LinkModel.from_config(SimConfig(gpu="h100"), 2, cpu=False)  # the H100's NVLink 4


def test_a_constant_planner_time_makes_simulations_repeatable():
    cfg = make_config(["pipeline.stages=2", "scheduler=sarathi", "sim.planner_time_us=30"])
    requests = [Request(f"r{i}", tuple(range(2, 40 + 9 * i)), SamplingParams(max_tokens=6)) for i in range(8)]

    def run():
        return simulate(cfg, requests, time_model=CostModel.default(2), links=LinkModel.uniform(2, latency_s=2e-4),
                        hidden_size=64, dtype_bytes=4, max_model_len=256, num_blocks=256)

    a, b = run(), run()
    assert all(np.array_equal(a.events[s], b.events[s]) for s in (0, 1))
    assert [repr(m) for m in a.micro_batches] == [repr(m) for m in b.micro_batches] and a.metrics == b.metrics


def test_sim_config_errors_name_the_key():
    for override, key in (("sim.link=ethernet", "sim.link"), ("sim.gpu=v100", "sim.gpu"),
                          ("sim.gpus_per_node=0", "sim.gpus_per_node"), ("sim.cost_model=guess", "sim.cost_model"),
                          ("sim.planner_time_us=-1", "sim.planner_time_us")):
        cfg = make_config(["pipeline.stages=2", override])
        with pytest.raises(ConfigError, match=key):
            cfg.validate()


def test_idle_rank_0_jumps_to_the_next_arrival():
    t = MS
    reqs = [Request(f"r{i}", (5,) * PROMPT, SamplingParams(max_tokens=1), arrival_s=a)
            for i, a in enumerate((0.5, 2.0))]
    res = _run(_cfg(2, 2), reqs, [t / 1e9] * 2)
    assert _compute_starts(res.events[0]) == {0: 500 * MS, 1: 2000 * MS}
    assert _compute_starts(res.events[1]) == {0: 500 * MS + t, 1: 2000 * MS + t}


def test_a_free_stage_0_and_free_links_give_the_serial_clock_of_planner_drive():
    from pp_runtime.planner import make_planner
    from pp_runtime.planner.loop import drive

    cfg = _cfg(2, 3, "scheduler=sarathi", "scheduler.token_budget=16")
    reqs = [Request(f"r{i}", tuple(range(2, 12 + 5 * i)), SamplingParams(max_tokens=4), arrival_s=0.01 * (i % 3))
            for i in range(7)]
    t = 2 * MS
    model = CostModel((0.0, t / 1e9), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))  # stage 0 free, stage 1 t per micro-batch
    res = simulate(cfg, reqs, time_model=model, hidden_size=4, dtype_bytes=4, max_model_len=256, num_blocks=1024)
    planner = make_planner(cfg.scheduler, num_blocks=1024, block_size=cfg.cache.block_size, num_slots=3,
                           max_model_len=256, cost_model=model)
    for r in reqs:
        planner.add_request(r)
    launched = []
    drive(planner, lambda piece: 0, duration_s=lambda mb: t / 1e9, on_schedule=launched.append)
    assert [repr(m) for m in launched] == [repr(m) for m in res.micro_batches]
    for a, b in zip(planner.seqs, res.seqs):
        assert a.token_times_s == pytest.approx(b.token_times_s, abs=1e-9)


@pytest.mark.parametrize("stages,chunks", [(2, 2), (2, 7), (3, 5), (4, 4), (4, 9)])
def test_one_prompts_chunks_pipeline_in_n_plus_s_minus_1_chunk_times(stages, chunks):
    # One request of `chunks` chunks on S equal stages: chunk k+1 enters stage 0 as soon as stage 0 is done with
    # chunk k, so the first token comes after (n + S - 1) chunk-times, not n * S as with one chunk in flight.
    t, chunk = 2 * MS, 4
    req = [Request("long", (5,) * (chunk * chunks), SamplingParams(max_tokens=1))]
    overrides = [f"pipeline.stages={stages}", "scheduler=sarathi", f"scheduler.token_budget={chunk}",
                 f"scheduler.chunk_size={chunk}", "scheduler.time_balanced=false", "sim.planner_time_us=0"]
    res = _run(make_config(overrides), req, [t / 1e9] * stages)
    assert [p.start for mb in res.micro_batches for p in mb.pieces] == [k * chunk for k in range(chunks)]
    for s in range(stages):
        assert _compute_starts(res.events[s]) == {k: (s + k) * t for k in range(chunks)}
    assert res.seqs[0].first_token_s * 1e9 == pytest.approx((chunks + stages - 1) * t, abs=1)
    serial = _run(make_config([*overrides, "scheduler.max_chunks_in_flight=1"]), req, [t / 1e9] * stages)
    assert serial.seqs[0].first_token_s * 1e9 == pytest.approx(chunks * stages * t, abs=1)


def test_eager_links_fitted_to_a_run_recover_its_latency_and_keep_the_mode():
    """Receives posted ahead (issue 14): the fit reads latency where the receiver was waiting, and stays eager."""
    from pp_runtime.sim.replay import measured_links

    n, t, lat, send = 3, 2 * MS, 400_000, 150_000
    res = _run(_cfg(n, n), _requests(12, max_tokens=3), [t / 1e9] * n,
               links=LinkModel.uniform(n, latency_s=lat / 1e9, send_s=send / 1e9))
    fitted = measured_links(res.events, LinkModel.uniform(n))
    for link in (*fitted.hops, fitted.back):
        assert not link.rendezvous
        assert round(link.latency_s * 1e9) == lat and round(link.send_s * 1e9) == send


def test_eager_is_the_default_link_mode():
    from pp_runtime.config import Config

    assert not Config().sim.rendezvous and not LinkModel.from_config(Config().sim, 2, cpu=True).hops[0].rendezvous


def test_fit_cost_model_returns_a_cost_model_as_it_is():
    from pp_runtime.planner.cost_model import CostModel
    from pp_runtime.sim import fit_cost_model

    model = CostModel(c0=[1e-3, 2e-3], c_tok=[1e-5, 1e-5], c_attn=[1e-9, 1e-9], c_dec=[1e-8, 1e-8])
    assert fit_cost_model(model, token_budget=64, max_context_len=256) is model
