"""Time models for the simulator: the roofline against hand-computed figures, its compute/memory regimes, the
layer profile scaled to a split, and build_time_model's choice and errors (each naming the key to fix)."""

from __future__ import annotations

import pytest

from pp_runtime.config import Config, ConfigError
from pp_runtime.planner.cost_model import CostModel
from pp_runtime.sim.hardware import GPUS, MODEL_SHAPES, GpuSpec, ModelShape
from pp_runtime.sim.layer_profile import PARTS, LayerProfile, LayerProfileError
from pp_runtime.sim.parts import SplitTimeModel
from pp_runtime.sim.roofline import RooflineParts, roofline_model
from pp_runtime.sim.time_model import build_time_model
from tests.tiny_models import tiny_config

TINY = ModelShape("tiny", 3, hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=16, gated_mlp=True,
                  vocab=32)
# 0.5 * 1e6 = 5e5 FLOP/s and 5e5 bytes/s achievable; 1 ms per micro-batch and 0.1 ms per layer fixed.
SLOW = GpuSpec("slow", bf16_flops=1e6, fp32_flops=4e5, hbm_bytes_s=1e6, memory_gib=1, flops_eff=0.5, bw_eff=0.5,
               overhead_s=1e-3, layer_overhead_s=1e-4)


def test_roofline_matches_hand_computed_figures():
    # A chunk of 4 tokens after a 2-token prefix, and one decode over a 10-token context; both sample.
    pieces = [(4, 6), (1, 10)]
    params = 2 * 8 * 2 * 4 + 2 * 8 * 1 * 4 + 3 * 8 * 16  # q,o + k,v + SwiGLU = 576
    tokens, pairs, kv_read = 5, 4 * 2 + (1 + 2 + 3 + 4) + 10, 2 + 10
    linear = max(2 * params * tokens / 5e5, params * 2 / 5e5)
    attention = max(4 * 2 * 4 * pairs / 5e5, 2 * 1 * 4 * 2 * (kv_read + tokens) / 5e5)
    layer = linear + attention + 1e-4
    embed = 2 * tokens * 8 * 2 / 5e5
    head = max(2 * 8 * 32 * 2 / 5e5, (32 * 8 * 2 + 2 * 32 * 4) / 5e5)
    got = roofline_model(TINY, SLOW, [2, 1]).predict(pieces)
    assert got == pytest.approx([1e-3 + 2 * layer + embed, 1e-3 + layer + head], rel=1e-12)


def test_roofline_float32_uses_fp32_peak_and_four_byte_weights():
    two = RooflineParts(TINY, SLOW, dtype_bytes=2).work([(4, 4)])
    four = RooflineParts(TINY, SLOW, dtype_bytes=4)
    assert four.work([(4, 4)])["linear"].bytes == 2 * two["linear"].bytes
    assert four.flops_s == 4e5 * 0.5


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("shape", ["gpt3-175b", "llama-3.1-8b"])
def test_roofline_compute_bound_prefill_memory_bound_decode(gpu, shape):
    parts = RooflineParts(MODEL_SHAPES[shape], GPUS[gpu])
    assert parts.bounds([(2048, 2048)])["linear"] == "compute"
    assert parts.bounds([(2048, 2048)])["attention"] == "compute"
    assert parts.bounds([(1, 128)] * 4)["linear"] == "memory"
    assert parts.bounds([(1, 128)] * 4)["attention"] == "memory"
    # Memory-bound: a few more decodes cost little; compute-bound: twice the tokens cost about twice the time.
    one, four = (parts.part_times([(1, 128)] * n).layer for n in (1, 4))
    assert four < 1.5 * one
    small, big = (parts.part_times([(n, n)]).layer for n in (2048, 4096))
    assert big > 1.9 * small


def test_model_shape_from_hf_matches_preset_fields():
    cfg = MODEL_SHAPES["llama-3.2-1b"].to_hf_config()
    assert ModelShape.from_hf(cfg, "llama-3.2-1b") == MODEL_SHAPES["llama-3.2-1b"]
    gpt = MODEL_SHAPES["gpt3-175b"]
    assert ModelShape.from_hf(gpt.to_hf_config(num_layers=2), "gpt3-175b").layer_params == gpt.layer_params
    assert gpt.layer_params == 12 * 12288**2  # the textbook 12 h^2 per GPT layer


def _profile() -> LayerProfile:
    """A profile fitted from rows made by known coefficients (noise-free)."""
    true = {"fixed": (1e-3, 1e-6, 0, 0), "layer": (2e-4, 3e-5, 4e-9, 5e-8), "embed": (1e-5, 2e-7, 0, 0),
            "head": (3e-4, 7e-5, 0, 0)}
    rows = {}
    for part, (c0, c_tok, c_attn, c_dec) in true.items():
        rows[part] = []
        for n, samples, attn, dec in [(1, 1, 0, 100), (8, 8, 0, 900), (64, 1, 4096, 0), (256, 1, 65536, 0),
                                      (128, 4, 8192, 300), (32, 16, 100, 2000)]:
            count = samples if part == "head" else n
            rows[part].append([n, samples, attn, dec, c0 + c_tok * count + c_attn * attn + c_dec * dec])
    return LayerProfile.fit(rows, {"device": "cpu"})


def test_layer_profile_scaled_to_a_split_is_the_sum_of_its_parts():
    prof = _profile()
    pieces = [(64, 200), (1, 50), (1, 70)]  # tokens 66, samples 3, attn 64*200, decode ctx 120

    def part(name: str, count: int) -> float:
        c0, c_tok, c_attn, c_dec = prof.coefs[name]
        return c0 + c_tok * count + c_attn * 64 * 200 + c_dec * 120

    fixed, layer, embed, head = part("fixed", 66), part("layer", 66), part("embed", 66), part("head", 3)
    got = SplitTimeModel(prof, [5, 3, 2]).predict(pieces)
    assert got == pytest.approx([fixed + 5 * layer + embed, fixed + 3 * layer, fixed + 2 * layer + head])
    assert prof.coefs["layer"] == pytest.approx((2e-4, 3e-5, 4e-9, 5e-8), rel=1e-6)
    assert prof.coefs["head"] == pytest.approx((3e-4, 7e-5, 0, 0), rel=1e-6, abs=1e-15)


def test_layer_profile_round_trips_and_rejects_bad_files(tmp_path):
    prof = _profile()
    prof.to_json(tmp_path / "p.json")
    assert LayerProfile.from_json(tmp_path / "p.json") == prof
    (tmp_path / "bad.json").write_text('{"coefs": {"layer": [1, 2]}}')
    with pytest.raises(LayerProfileError, match="coefs.fixed"):
        LayerProfile.from_json(tmp_path / "bad.json")
    with pytest.raises(LayerProfileError, match="part 'embed'"):
        LayerProfile.fit({p: [[1, 1, 0, 0, 1.0]] * 4 for p in PARTS if p != "embed"})


def _cfg(kind: str, **sim) -> Config:
    cfg = Config()
    cfg.pipeline.stages = 2
    cfg.sim.cost_model = kind
    for key, value in sim.items():
        setattr(cfg.sim, key, value)
    return cfg


def test_build_time_model_chooses_by_sim_cost_model(tmp_path):
    hf = tiny_config("llama", num_layers=4)
    ranges = [range(0, 3), range(3, 4)]
    _profile().to_json(tmp_path / "p.json")
    prof = build_time_model(_cfg("layer_profile", layer_profile_path=str(tmp_path / "p.json")), hf_config=hf,
                            layer_ranges=ranges)
    assert prof.num_stages == 2 and prof.layer_counts == [3, 1]
    roof = build_time_model(_cfg("roofline", gpu="a100"), hf_config=hf, layer_ranges=ranges)
    assert roof.source.shape == ModelShape.from_hf(hf) and roof.source.dtype_bytes == 2
    big = build_time_model(_cfg("roofline", gpu="h100", model_shape="gpt3-175b"), hf_config=hf, layer_ranges=ranges)
    assert big.source.shape.name == "gpt3-175b"
    run = CostModel.default(2)
    assert build_time_model(_cfg("profiled"), hf_config=hf, layer_ranges=ranges, run_cost_model=run) is run
    CostModel.default(2).to_json(tmp_path / "cm.json")
    cm = build_time_model(_cfg("profiled", cost_model_path=str(tmp_path / "cm.json")), hf_config=hf,
                          layer_ranges=ranges, run_cost_model=CostModel.default(3))
    assert cm == CostModel.default(2)
    f32 = _cfg("roofline", gpu="a100")
    f32.dtype = "float32"
    assert build_time_model(f32, hf_config=hf, layer_ranges=ranges).source.dtype_bytes == 4


@pytest.mark.parametrize("kind, sim, key", [
    ("profiled", {"cost_model_path": "3stages"}, "sim.cost_model_path"),
    ("profiled", {"cost_model_path": "/nonexistent.json"}, "sim.cost_model_path"),
    ("layer_profile", {"layer_profile_path": "/nonexistent.json"}, "sim.layer_profile_path"),
    ("layer_profile", {"layer_profile_path": None}, "sim.layer_profile_path"),
    ("roofline", {"model_shape": "gpt-5"}, "sim.model_shape"),
    ("roofline", {"gpu": "v100"}, "sim.gpu"),
])
def test_build_time_model_errors_name_the_key(tmp_path, kind, sim, key):
    if sim.get("cost_model_path") == "3stages":
        CostModel.default(3).to_json(tmp_path / "cm3.json")
        sim = {"cost_model_path": str(tmp_path / "cm3.json")}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_time_model(_cfg(kind, **sim), hf_config=tiny_config("llama"), layer_ranges=[range(0, 2), range(2, 4)])


def test_run_cost_model_of_another_layout_is_refused():
    with pytest.raises(ConfigError, match=r"sim\.cost_model_path"):
        build_time_model(_cfg("profiled"), hf_config=tiny_config("llama"), layer_ranges=[range(0, 2), range(2, 4)],
                         run_cost_model=CostModel.default(3))


def test_a_split_roofline_model_reads_as_its_shape_gpu_and_split():
    from pp_runtime.sim.hardware import MODEL_SHAPES, gpu
    from pp_runtime.sim.roofline import roofline_model

    text = repr(roofline_model(MODEL_SHAPES["llama-3.1-8b"], gpu("h100"), [10, 22]))
    assert "llama-3.1-8b" in text and "h100" in text and "[10, 22]" in text and " at 0x" not in text


def test_a_cost_model_file_timed_on_another_layout_is_refused(tmp_path):
    # A profiled file's stage times are the simulated stages' only on the layout it was timed on: [2, 2] layers
    # with the head whole here; the job splits [3, 1], or keeps [2, 2] but splits the head.
    from pp_runtime.planner.cost_model import stage_layout

    hf = tiny_config("llama")
    ranges = [range(0, 2), range(2, 4)]
    path = str(tmp_path / "cm.json")
    CostModel.default(2).to_json(path, layout=stage_layout([2, 2], None))
    assert build_time_model(_cfg("profiled", cost_model_path=path), hf_config=hf, layer_ranges=ranges) == \
        CostModel.default(2)
    for layers, split in (([range(0, 3), range(3, 4)], None), (ranges, 64)):
        with pytest.raises(ConfigError, match=r"sim\.cost_model_path=.*was timed on \[2, 2\] layers per stage "
                                              r"and the LM head whole.*pipeline\.layers_per_stage=\[2, 2\] and "
                                              r"pipeline\.split_lm_head=false"):
            build_time_model(_cfg("profiled", cost_model_path=path), hf_config=hf, layer_ranges=layers,
                             head_split=split)
