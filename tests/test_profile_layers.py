"""scripts/profile_layers.py: a per-layer profile taken through the runtime's stage code on random weights of a
tiny shape, written as a file that build_time_model loads and scales to a split."""

from __future__ import annotations

import pytest
import torch

from pp_runtime.config import Config
from pp_runtime.sim.layer_profile import PARTS, LayerProfile
from pp_runtime.sim.time_model import build_time_model
from scripts.profile_layers import build_parts, main, take_profile
from tests.tiny_models import make_tiny_model, tiny_config


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_parts_are_stages_owning_one_part_each(arch):
    hf = tiny_config(arch, num_layers=1)
    parts = build_parts(hf, device=torch.device("cpu"), dtype=torch.float32)
    assert set(parts) == set(PARTS)
    assert [len(parts[p].layers) for p in PARTS] == [0, 1, 0, 0]
    assert parts["embed"].is_first and not parts["embed"].is_last
    assert parts["head"].is_last and not parts["head"].is_first
    assert not parts["fixed"].is_first and not parts["fixed"].is_last
    weights = [p for p in parts["layer"].parameters() if p.dim() > 1]
    assert weights and all(torch.isfinite(w).all() and w.std() > 0 for w in weights)


def test_profile_file_loads_and_scales_to_a_split(tmp_path):
    hf = tiny_config("llama", num_layers=1)
    prof = take_profile(hf, device=torch.device("cpu"), dtype=torch.float32, token_budget=16, max_context_len=64,
                        repeats=1)
    assert set(prof.coefs) == set(PARTS) and all(len(prof.rows[p]) >= 4 for p in PARTS)
    assert all(v >= 0 for c in prof.coefs.values() for v in c)
    prof.to_json(tmp_path / "p.json")
    assert LayerProfile.from_json(tmp_path / "p.json") == prof
    cfg = Config()
    cfg.pipeline.stages = 2
    cfg.sim.cost_model, cfg.sim.layer_profile_path = "layer_profile", str(tmp_path / "p.json")
    model = build_time_model(cfg, hf_config=tiny_config("llama", num_layers=6), layer_ranges=[range(4), range(4, 6)])
    parts = prof.part_times([(8, 8), (1, 20)])
    assert model.predict([(8, 8), (1, 20)]) == pytest.approx(
        [parts.fixed + 4 * parts.layer + parts.embed, parts.fixed + 2 * parts.layer + parts.head])


def test_cli_writes_a_profile(tmp_path, capsys):
    out = tmp_path / "p.json"
    model = make_tiny_model("qwen2", tmp_path / "m", num_layers=2)
    main(["--model-dir", str(model), "--token-budget", "8", "--max-context-len", "32", "--repeats", "1",
          "--device", "cpu", "--out", str(out)])
    assert LayerProfile.from_json(out).meta["device"] == "cpu"
    assert "layer" in capsys.readouterr().out
