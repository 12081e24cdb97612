"""Cost model: prediction, least-squares fit, the closed-form chunk solver, JSON files, profile shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.planner.cost_model import CostModel, CostModelError, profile_points, work

TRUE = CostModel(c0=(3e-3, 2e-3, 4e-3), c_tok=(1e-4, 8e-5, 2e-4), c_attn=(2e-8, 2e-8, 3e-8),
                 c_dec=(3e-7, 2e-7, 5e-7), c_ctx=(4e-6, 3e-6, 5e-6))


def rows_for(model: CostModel, shapes) -> list[tuple[int, int, int, int, int, float]]:
    """What the runtime hands to fit: (stage, num_tokens, attn_work, decode_ctx, prefill_ctx, seconds) per shape
    and stage."""
    rows = []
    for shape in shapes:
        for stage, t in enumerate(model.predict(shape)):
            rows.append((stage, *work(shape), t))
    return rows


def test_predict_follows_the_formula_per_stage():
    pieces = [(10, 10), (1, 300), (4, 54)]  # fresh chunk, decode, later chunk
    attn = 10 * 10 + 4 * 54  # prefill pairs
    dec = 300  # cached tokens the decode reads
    pre = 10 + 54  # context tokens the prefill chunks read
    expect = [TRUE.c0[s] + TRUE.c_tok[s] * 15 + TRUE.c_attn[s] * attn + TRUE.c_dec[s] * dec + TRUE.c_ctx[s] * pre
              for s in range(3)]
    assert TRUE.predict(pieces) == pytest.approx(expect)
    assert TRUE.predict_max(pieces) == pytest.approx(max(expect))


def test_fit_recovers_known_coefficients_from_exact_samples():
    fitted = CostModel.fit(rows_for(TRUE, profile_points(256)))
    for key in ("c0", "c_tok", "c_attn", "c_dec", "c_ctx"):
        assert np.allclose(getattr(fitted, key), getattr(TRUE, key), rtol=1e-6, atol=1e-12), key


def test_fit_keeps_coefficients_non_negative_and_refits_the_rest():
    # Timings that fall slightly with attention work: plain least squares would give c_attn < 0.
    shapes = profile_points(64)
    rows = [(0, n, a, d, 1e-3 + 2e-5 * n + 1e-7 * d - 1e-12 * a) for n, a, d, _ in (work(s) for s in shapes)]
    fitted = CostModel.fit(rows)
    assert fitted.c_attn == (0.0,)
    assert fitted.c_tok[0] > 0 and fitted.c0[0] > 0 and fitted.c_dec[0] > 0


def test_fit_names_the_stage_that_lacks_samples():
    rows = rows_for(TRUE, profile_points(32))
    rows = [r for r in rows if r[0] != 1]
    with pytest.raises(CostModelError, match="stage 1 has 0 timing samples"):
        CostModel.fit(rows)
    with pytest.raises(CostModelError, match="no timing samples"):
        CostModel.fit([])


def test_json_round_trip(tmp_path):
    path = tmp_path / "cost.json"
    TRUE.to_json(path)
    assert CostModel.from_json(path) == TRUE
    assert CostModel.from_json(str(path)).num_stages == 3


def test_four_term_files_and_rows_still_work(tmp_path):
    # A file (or cost-model cache entry) written before c_ctx existed loads with c_ctx = 0; rows without
    # prefill_ctx fit the four-term form.
    path = tmp_path / "old.json"
    path.write_text('{"c0": [1e-3], "c_tok": [1e-4], "c_attn": [2e-8], "c_dec": [3e-7]}')
    old = CostModel.from_json(path)
    assert old.c_ctx == (0.0,) and old == CostModel((1e-3,), (1e-4,), (2e-8,), (3e-7,))
    assert old.predict([(8, 100)]) == pytest.approx([1e-3 + 8e-4 + 2e-8 * 800])
    four = [(stage, n, a, d, t) for stage, n, a, d, _, t in rows_for(TRUE, profile_points(64))]
    assert CostModel.fit(four).c_ctx == (0.0,) * 3


# One H200, random Llama-3.1-8B shape (32 layers, bf16, Triton attention, eager): `scripts/chunk_cost.py gpu
# --max-prefix 32768 --chunk 512 --budget 1024 --gpu h200` (docs/BENCHMARKS.md, issue 17), as (num_tokens, prefix,
# measured ms): the 512-token chunks, then the balanced chunks. An eager step is host-bound near 24 ms up to ~2k
# tokens of prefix, then the KV read of the prefix shows.
H200_CHUNKS = [(512, 0, 24.1), (512, 512, 24.8), (512, 1024, 24.7), (512, 2048, 24.0), (512, 4096, 26.0),
               (512, 8192, 28.3), (512, 16384, 37.6), (512, 32256, 55.5), (512, 0, 23.7), (512, 512, 24.9),
               (512, 1024, 23.8), (412, 2048, 25.7), (261, 4096, 24.6), (147, 8192, 24.4), (78, 16384, 26.3),
               (40, 32256, 42.1)]


def test_prefill_context_term_fits_measured_gpu_chunks_better():
    rows = [(0, *work([(n, prefix + n)]), ms / 1e3) for n, prefix, ms in H200_CHUNKS]
    five = CostModel.fit(rows)
    four = CostModel.fit([r[:4] + r[5:] for r in rows])  # the form before c_ctx

    def errors(model):
        return [abs(model.predict([(n, prefix + n)])[0] - ms / 1e3) / (ms / 1e3) for n, prefix, ms in H200_CHUNKS]

    assert four.c_ctx == (0.0,) and five.c_ctx[0] > 0
    e4, e5 = errors(four), errors(five)
    # Without the term the 40-token chunk at 32k is priced at 61% of its time (its KV read is not in c_attn * n * ctx).
    assert max(e5) < 0.12 < 0.3 < max(e4)
    assert np.mean(e5) < np.mean(e4)


@pytest.mark.parametrize("text, match", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "must hold an object"),
    ('{"c0": [1e-3], "c_tok": [1e-4]}', "key 'c_attn'"),
    ('{"c0": [1e-3], "c_tok": [1e-4], "c_attn": [0]}', "key 'c_dec'"),
    ('{"c0": [1e-3], "c_tok": ["fast"], "c_attn": [0], "c_dec": [0]}', "key 'c_tok'"),
    ('{"c0": [1e-3, 1e-3], "c_tok": [1e-4], "c_attn": [0], "c_dec": [0]}', "one c0, c_tok, c_attn and c_dec per"),
    ('{"c0": [-1e-3], "c_tok": [1e-4], "c_attn": [0], "c_dec": [0]}', "c0=.*-0.001.*>= 0"),
])
def test_malformed_file_names_the_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CostModelError, match=match) as err:
        CostModel.from_json(path)
    assert "bad.json" in str(err.value)


def test_missing_file_says_what_to_set(tmp_path):
    # The library names the file; each caller names its own key (the runtime's, or pp-sim's sim.cost_model_path).
    with pytest.raises(CostModelError, match="nope.json.*cost_model.json written by a run"):
        CostModel.from_json(tmp_path / "nope.json")
    from launch.rank_job import _load_cost_model
    from pp_runtime.config import ConfigError
    from tests.jobs import make_config

    cfg = make_config([f"scheduler.cost_model_path={tmp_path / 'nope.json'}"])
    with pytest.raises(ConfigError, match=r"scheduler\.cost_model_path=.*nope.json.*scheduler\.cost_model_path=null"):
        _load_cost_model(cfg, None)


def test_default_is_valid_and_weights_the_end_stages():
    for stages in (1, 2, 4):
        m = CostModel.default(stages)
        assert m.num_stages == stages
        assert all(v > 0 for v in m.c0 + m.c_tok + m.c_attn + m.c_dec)
    m = CostModel.default(4)
    t = m.predict([(128, 128)])
    assert t[0] > t[1] and t[3] > t[1] and t[1] == t[2]  # embedding on stage 0, LM head on the last
    json.dumps(list(m.c0))  # plain floats


@settings(max_examples=200, deadline=None)
@given(tokens=st.integers(0, 300), attn=st.integers(0, 100_000), dec=st.integers(0, 20_000),
       pre=st.integers(0, 5000), prefix=st.integers(0, 5000), limit_ms=st.floats(0.0, 60.0), cap=st.integers(0, 400))
def test_max_chunk_is_the_largest_chunk_within_the_limit(tokens, attn, dec, pre, prefix, limit_ms, cap):
    limit = limit_ms / 1e3
    n = TRUE.max_chunk(tokens, attn, prefix=prefix, limit_s=limit, cap=cap, decode_ctx=dec, prefill_ctx=pre)

    def fits(k):
        return max(TRUE.stage_times(tokens + k, attn + k * (prefix + k), dec, pre + prefix + k)) <= limit

    assert 0 <= n <= cap
    assert n == 0 or fits(n)
    assert n == cap or not fits(n + 1)


def test_profile_points_cover_prefill_long_prefix_and_decode():
    shapes = profile_points(256, max_context_len=2048)
    fresh = [s for s in shapes if len(s) == 1 and s[0][0] == s[0][1] and s[0][0] > 1]
    long_prefix = [s for s in shapes if len(s) == 1 and s[0][1] > s[0][0] > 1]
    decodes = [s for s in shapes if all(n == 1 for n, _ in s)]
    assert len({s[0][0] for s in fresh}) >= 3
    assert any(ctx - n >= 512 for (n, ctx), in long_prefix)
    assert len({len(s) for s in decodes}) >= 2 and len({s[0][1] for s in decodes}) >= 2
    assert all(n <= 256 and n <= ctx <= 2048 for s in shapes for n, ctx in s)
    assert len(shapes) == len({tuple(s) for s in shapes}) <= 24
    x = np.array([[1, *work(s)] for s in shapes], dtype=float)
    assert np.linalg.matrix_rank(x / x.max(axis=0)) == 5  # the five coefficients are separable
    assert profile_points(256, max_context_len=2048) == shapes


def test_profile_points_work_for_tiny_budgets_and_caches():
    for m, cap in ((1, 8), (2, 8), (3, 8), (256, 8), (256, 1)):
        shapes = profile_points(m, max_context_len=cap)
        assert shapes and all(1 <= n <= m and n <= ctx <= cap for s in shapes for n, ctx in s), (m, cap)
    with pytest.raises(CostModelError, match="max_tokens >= 1"):
        profile_points(0)


def test_max_chunk_with_no_room_left_and_a_zero_token_coefficient_is_zero():
    # A fit may clamp c_tok to 0; at prefix 0 with the micro-batch exactly at the limit, the closed-form root was 0/0.
    model = CostModel(c0=[1e-3], c_tok=[0.0], c_attn=[1e-6], c_dec=[0.0])
    limit = model.stage_times(8, 64)[0]
    assert model.max_chunk(8, 64, prefix=0, limit_s=limit, cap=32) == 0


def test_the_cost_model_cache_key_carries_the_form(monkeypatch, tmp_path):
    # A cached model of the four-term form is profiled again rather than loaded (it would lack c_ctx).
    from pp_runtime.model import cost_cache
    from pp_runtime.planner.cost_model import FORM_VERSION

    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path))
    key = cost_cache.cost_model_key(model_dir="llama-3.1-8b", layers_per_stage=[32], device="cpu:x",
                                    dtype="float32", backend="sdpa", threads=1, token_budget=256, max_context_len=8192)
    assert key["form"] == FORM_VERSION >= 2
    old = {k: v for k, v in key.items() if k != "form"}
    cost_cache.store(old, CostModel((1e-3,), (1e-4,), (0.0,), (0.0,)))
    assert cost_cache.load_cached(key) is None and cost_cache.load_cached(old) is not None


def test_the_cost_model_cache_key_changes_with_the_stage_code(monkeypatch, tmp_path):
    # A model timed by other stage code (e.g. before a faster LM head) is profiled again rather than loaded.
    import shutil

    import stages
    from pp_runtime.model import cost_cache
    from stages.profiler import stage_code_digest

    digest = stage_code_digest()
    assert digest == stage_code_digest() and len(digest) == 16
    copy = tmp_path / "stages"
    shutil.copytree(Path(stages.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stage_model.py").write_text((copy / "stage_model.py").read_text() + "\n# changed\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("stages_copy_profiler", copy / "profiler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.stage_code_digest() != digest
    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path / "cache"))
    args = dict(model_dir="llama-3.1-8b", layers_per_stage=[32], device="cpu:x", dtype="float32", backend="sdpa",
                threads=1, token_budget=256, max_context_len=8192)
    cost_cache.store(cost_cache.cost_model_key(**args, stage_code=digest), CostModel((1e-3,), (1e-4,), (0.0,), (0.0,)))
    assert cost_cache.load_cached(cost_cache.cost_model_key(**args, stage_code=module.stage_code_digest())) is None
    assert cost_cache.load_cached(cost_cache.cost_model_key(**args, stage_code=digest)) is not None


def test_the_cost_model_cache_key_tells_a_split_head_from_a_whole_one(monkeypatch, tmp_path):
    # The same layers timed with half of the LM head on stage 0 are another model (the newcomer reused one for both).
    from pp_runtime.model import cost_cache

    monkeypatch.setenv("PP_RUNTIME_COST_CACHE", str(tmp_path))
    args = dict(model_dir="llama-3.1-8b", layers_per_stage=[15, 15], device="cpu:x", dtype="float32", backend="sdpa",
                threads=1, token_budget=256, max_context_len=8192)
    cost_cache.store(cost_cache.cost_model_key(**args, head_split=24576), CostModel((1e-3,), (1e-4,), (0.0,), (0.0,)))
    assert cost_cache.load_cached(cost_cache.cost_model_key(**args)) is None
    assert cost_cache.load_cached(cost_cache.cost_model_key(**args, head_split=24576)) is not None
