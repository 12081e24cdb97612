"""pp-tune: finds the known optimum of a synthetic time model, never returns a winner that breaks the SLO, says
which option to change when the SLO is impossible, and writes an override file that a job's config loads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launch import tune as tune_cli
from pp_runtime.config import Config
from pp_runtime.sim.layer_profile import LayerProfile
from pp_runtime.sim.tuning import TBT, THROUGHPUT, Candidate, TuneError, candidates, pareto, search
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model

NUM_LAYERS = 8


NUM_REQUESTS = 12


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> list[str]:
    """Overrides of a small job: a tiny random 8-layer Llama, 12 synthetic requests, 2 stages."""
    model = make_tiny_model("llama", tmp_path_factory.mktemp("model"), num_layers=NUM_LAYERS)
    return [f"model.path={model}", "workload=synthetic", f"workload.num_requests={NUM_REQUESTS}",
            "workload.prefill_len=40", "pipeline.stages=2"]


def _profile(tmp_path) -> str:
    """A per-layer profile whose embedding costs as much as 2 layers: the time-based split beats the heuristic."""
    coefs = {"fixed": (1e-4, 0, 0, 0), "layer": (1e-3, 1e-5, 0, 0), "embed": (2e-3, 2e-5, 0, 0),
             "head": (0, 0, 0, 0)}
    path = tmp_path / "profile.json"
    LayerProfile(coefs, {"device": "cpu"}).to_json(path)
    return str(path)


def _cfg(tmp_path, job: list[str]) -> Config:
    return make_config([*job, "sim.cost_model=layer_profile", f"sim.layer_profile_path={_profile(tmp_path)}",
                        "scheduler.token_budget=64", "scheduler.chunk_size=64"])


def _synthetic(cfg, requests, *, time_model, links, hidden_size, dtype_bytes, eos_token_ids, max_model_len,
               num_blocks):
    """A stand-in simulator with a known optimum: throughput grows with the budget and with up to 3 micro-batches
    in flight and falls with the bottleneck stage's time; p99 TBT grows with budget, chunk and depth."""
    b, c, d = cfg.scheduler.token_budget, cfg.scheduler.chunk_size, cfg.pipeline.depth
    step = max(time_model.predict([(b, b)]))  # the split's bottleneck on a full micro-batch
    return type("R", (), {"metrics": {THROUGHPUT: b * min(d, 3) / step, TBT: step * 1e3 * d * (1 + c / b),
                                      "p99_ttft_ms": 1.0, "completed": len(requests)}})()


def _brute_force_best(cfg, slo: float):
    """The optimum of the synthetic simulator under ``slo``, by filtering every candidate's metrics directly."""
    grid = tune_cli.tune(cfg, tbt_slo_ms=1e9, max_sims=10_000, simulate=_synthetic).trials
    ok = [t for t in grid if t.metrics[TBT] <= slo]
    return max(ok, key=lambda t: (t.metrics[THROUGHPUT], -t.metrics[TBT])), grid


def test_tune_finds_the_known_optimum_including_the_time_based_split(tmp_path, job):
    cfg = _cfg(tmp_path, job)
    _, grid = _brute_force_best(cfg, 1e9)
    slo = sorted(t.metrics[TBT] for t in grid)[len(grid) // 2]  # a binding SLO: half the grid breaks it
    best, _ = _brute_force_best(cfg, slo)
    result = tune_cli.tune(cfg, tbt_slo_ms=slo, max_sims=10_000, simulate=_synthetic)
    assert result.winner.candidate == best.candidate
    splits = {t.candidate.layers_per_stage for t in grid}
    assert len(splits) == 2  # the heuristic's and the time model's
    # The embedding is dear: the winner's split gives stage 0 fewer layers than the heuristic's even split.
    assert result.winner.candidate.layers_per_stage[0] < NUM_LAYERS // 2
    assert result.winner in result.frontier


@settings(max_examples=60)
@given(metrics=st.lists(st.tuples(st.floats(1, 1e4), st.floats(0.1, 100)), min_size=1, max_size=40),
       slo=st.floats(0.1, 100), max_sims=st.integers(1, 40), min_gain=st.sampled_from([0.0, 0.05, 0.5]))
def test_the_winner_never_violates_the_slo(metrics, slo, max_sims, min_gain):
    grid = [Candidate(16 * (i + 1), 16, 2, (4, 4)) for i in range(len(metrics))]
    table = {c: {THROUGHPUT: tput, TBT: tbt, "completed": 1} for c, (tput, tbt) in zip(grid, metrics)}
    try:
        result = search(table.__getitem__, grid, tbt_slo_ms=slo, max_sims=max_sims, min_gain=min_gain)
    except TuneError as exc:
        assert "--tbt-slo-ms" in str(exc)
        assert all(tbt > slo for _, tbt in metrics[:max_sims])  # every simulated candidate breaks the SLO
        return
    assert len(result.trials) <= max_sims
    assert result.winner.metrics[TBT] <= slo
    margin = 1 + min_gain if result.winner is result.default else 1
    assert all(t.metrics[TBT] > slo or t.metrics[THROUGHPUT] <= result.winner.metrics[THROUGHPUT] * margin
               for t in result.trials)
    front = pareto(result.trials)
    assert all(not (o.throughput > t.throughput and o.p99(TBT) < t.p99(TBT)) for t in front for o in result.trials)


def test_the_default_stays_unless_the_gain_is_worth_it():
    grid = [Candidate(16, 16, 2, (4, 4)), Candidate(32, 16, 2, (4, 4))]
    table = {grid[0]: {THROUGHPUT: 100, TBT: 5, "completed": 1}, grid[1]: {THROUGHPUT: 104, TBT: 4, "completed": 1}}
    assert search(table.__getitem__, grid, tbt_slo_ms=10, min_gain=0.05).winner.candidate == grid[0]
    assert search(table.__getitem__, grid, tbt_slo_ms=10, min_gain=0.03).winner.candidate == grid[1]
    # A default that breaks the SLO never stays, however small the gain.
    assert search(table.__getitem__, grid, tbt_slo_ms=4.5, min_gain=0.05).winner.candidate == grid[1]


def test_the_ttft_slo_filters_too():
    grid = [Candidate(16, 16, 2, (4, 4)), Candidate(32, 16, 2, (4, 4))]
    table = {grid[0]: {THROUGHPUT: 10, TBT: 1, "p99_ttft_ms": 50, "completed": 1},
             grid[1]: {THROUGHPUT: 99, TBT: 1, "p99_ttft_ms": 500, "completed": 1}}
    assert search(table.__getitem__, grid, tbt_slo_ms=5).winner.candidate == grid[1]
    assert search(table.__getitem__, grid, tbt_slo_ms=5, ttft_slo_ms=100).winner.candidate == grid[0]
    with pytest.raises(TuneError, match="--ttft-slo-ms=10"):
        search(table.__getitem__, grid, tbt_slo_ms=5, ttft_slo_ms=10)


def test_a_winner_may_not_drop_requests():
    grid = [Candidate(16, 16, 2, (4, 4)), Candidate(32, 16, 2, (4, 4))]
    table = {grid[0]: {THROUGHPUT: 10, TBT: 1, "completed": 5}, grid[1]: {THROUGHPUT: 99, TBT: 1, "completed": 4}}
    assert search(table.__getitem__, grid, tbt_slo_ms=5).winner.candidate == grid[0]


def test_an_impossible_slo_names_the_option(tmp_path, job, capsys, monkeypatch):
    with pytest.raises(TuneError, match="--tbt-slo-ms=1e-06.*raise --tbt-slo-ms"):
        tune_cli.tune(_cfg(tmp_path, job), tbt_slo_ms=1e-6, simulate=_synthetic)
    monkeypatch.setattr(tune_cli, "_simulate", lambda: _synthetic)
    code = tune_cli.main(["--tbt-slo-ms", "1e-6", "--out", str(tmp_path / "o"), *job, "sim.cost_model=roofline",
                          "sim.gpu=a100"])
    assert code == 1 and "--tbt-slo-ms" in capsys.readouterr().err


def test_the_override_file_loads_into_a_job_config(tmp_path, job, monkeypatch, capsys):
    monkeypatch.setattr(tune_cli, "_simulate", lambda: _synthetic)
    out = tmp_path / "out"
    assert tune_cli.main(["--tbt-slo-ms", "1e9", "--out", str(out), "--name", "pick", *job,
                          "sim.cost_model=roofline", "sim.gpu=a100", "scheduler.token_budget=64"]) == 0
    assert "frontier" in capsys.readouterr().out
    text = (out / "tune" / "pick.yaml").read_text()
    cfg = make_config([f"hydra.searchpath=[file://{out.resolve()}]", "+tune=pick"])
    fields = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in text.splitlines()[2:]
              if not line.endswith(":")}
    assert str(cfg.scheduler.token_budget) == fields["token_budget"]
    assert str(cfg.scheduler.chunk_size) == fields["chunk_size"]
    assert str(cfg.pipeline.num_microbatches) == fields["num_microbatches"]
    assert str(cfg.pipeline.layers_per_stage) == fields["layers_per_stage"]
    assert cfg.pipeline.stages == 2 and sum(cfg.pipeline.layers_per_stage) == NUM_LAYERS
    # A GPU preset simulates the LM head whole (split_lm_head=auto splits on the CPU only): the file says so, so a
    # CPU run of the winner uses the simulated layout.
    assert fields["split_lm_head"] == "false" and cfg.pipeline.split_lm_head is False
    cfg.validate()


def test_grid_keeps_chunks_within_budget_and_default_first():
    grid = candidates(token_budget=256, chunk_size=128, num_microbatches=2, num_stages=2, splits=[(4, 4), (3, 5)])
    assert grid[0] == Candidate(256, 128, 2, (4, 4))
    assert all(c.chunk_size <= c.token_budget and c.num_microbatches >= 2 for c in grid)
    assert len(set(grid)) == len(grid)
    assert {c.token_budget for c in grid} == {64, 128, 256, 512, 1024}


def test_tune_with_the_real_simulator_meets_its_slo(tmp_path, job):
    cfg = _cfg(tmp_path, job)
    free = tune_cli.tune(cfg, tbt_slo_ms=1e9, max_sims=12)
    slo = sorted(t.p99(TBT) for t in free.trials)[len(free.trials) // 2]
    result = tune_cli.tune(cfg, tbt_slo_ms=slo, max_sims=12)
    assert result.winner.p99(TBT) <= slo
    assert result.winner.metrics["completed"] == NUM_REQUESTS
    assert len(result.trials) <= 12


def test_a_layer_profile_taken_on_the_cpu_is_simulated_as_cpu_stages(tmp_path, job):
    # pp-tune profiles a layer on this machine: on the CPU its simulations (and so its winner) split the LM head as
    # a CPU run does; a GPU preset's roofline does not.
    from pp_runtime.sim.sim_job import simulates_cpu

    cfg = _cfg(tmp_path, job)  # a layer profile whose meta says device cpu, device=auto
    assert simulates_cpu(cfg) and tune_cli._simulated_split(cfg)
    gpu_profile = tmp_path / "gpu.json"
    LayerProfile({p: (1e-3, 0, 0, 0) for p in ("fixed", "layer", "embed", "head")}, {"device": "cuda"}).to_json(
        gpu_profile)
    cfg.sim.layer_profile_path = str(gpu_profile)
    assert not simulates_cpu(cfg) and not tune_cli._simulated_split(cfg)
    cfg.device = "cpu"
    assert simulates_cpu(cfg)
