"""pp-tune prices the job's own model: with sim.cost_model=layer_profile and no profile it profiles the job's model
(once; then from the cache), and a profile of another shape is refused naming both."""

from __future__ import annotations

import pytest

import launch.tune as tune_cli
import scripts.profile_layers
from pp_runtime.config import ConfigError
from pp_runtime.sim.layer_profile import LayerProfile
from pp_runtime.sim.time_model import part_source
from tests.jobs import make_config
from tests.tiny_models import make_tiny_model, tiny_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("model") / "llama", num_layers=4)


def test_a_profile_of_another_shape_is_refused_naming_both(model, tmp_path):
    big = LayerProfile({p: (1e-3, 0, 0, 0) for p in ("fixed", "layer", "embed", "head")},
                       {"model_type": "llama", "hidden_size": 2048, "shape": "llama-3.2-1b"})
    big.to_json(tmp_path / "prof.json")
    cfg = make_config([f"model.path={model}", "pipeline.stages=2", "sim.cost_model=layer_profile",
                       f"sim.layer_profile_path={tmp_path / 'prof.json'}"])
    with pytest.raises(ConfigError, match=r"another model shape than the job's model.path=.*hidden_size 2048 vs 64"
                                          r".*llama-3.2-1b"):
        part_source(cfg, hf_config=tiny_config("llama"))


def test_pp_tune_profiles_the_jobs_own_model_once(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path / "cache"))
    args = ["--tbt-slo-ms", "1e9", "--max-sims", "2", "--sample", "4", f"model.path={model}", "pipeline.stages=2",
            "workload=synthetic", "workload.num_requests=4", "workload.prefill_len=8", "scheduler.token_budget=16",
            "scheduler.chunk_size=16", "sim.cost_model=layer_profile"]
    assert tune_cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    profile = LayerProfile.from_json(tmp_path / "one" / "layer_profile.json")
    assert profile.meta["hidden_size"] == 64 and profile.shape_mismatch(tiny_config("llama")) is None

    def no_profiling(*a, **k):
        raise AssertionError("profiled again")

    monkeypatch.setattr(scripts.profile_layers, "take_profile", no_profiling)
    assert tune_cli.main([*args, "--out", str(tmp_path / "two")]) == 0
    assert "from the cache" in capsys.readouterr().err
    one, two = (tmp_path / d / "layer_profile.json" for d in ("one", "two"))
    assert one.read_text() == two.read_text()
