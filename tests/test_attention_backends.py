"""Every attention backend through the ``pp_paged`` function (what transformers calls) against the sdpa one, and
how ``model.attention`` resolves. Triton runs under its interpreter on the CPU (conftest sets TRITON_INTERPRET)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pp_runtime.plan import MicroBatch, Piece
from stages import attention
from stages.attention import backend, choose_backend, paged_attention, prepare
from stages.inputs import build_stage_inputs
from stages.kv_cache import KVCache

HQ, HKV, D, BLOCK = 4, 2, 16, 16
CPU = torch.device("cpu")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Per micro-batch: (sequence, start, tokens). Sequence -> block table (shuffled, block 0 in use).
TABLES = {0: (5, 0, 7), 1: (3,), 2: (6, 1), 3: (2, 4)}
SCHEDULE = [
    [(0, 0, 20), (1, 0, 1), (2, 0, 3), (3, 0, 17)],  # a chunk over a block boundary, a 1-token prompt, ...
    [(0, 20, 13), (1, 1, 1), (2, 3, 1), (3, 17, 1)],  # a chunk against a cached prefix, beside decodes
    [(0, 33, 1), (2, 4, 1), (3, 18, 2)],
]


def _hf_config():
    return SimpleNamespace(num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, hidden_size=HQ * D)


def _run(backend: str, *, window: int | None, device: torch.device, block_size: int = BLOCK,
         dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    cache = KVCache([0], num_blocks=8, block_size=block_size, hf_config=_hf_config(), dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(0)
    outs = []
    for mb_id, entries in enumerate(SCHEDULE):
        pieces = tuple(Piece(seq_id=s, start=start, token_ids=(1,) * n, block_table=TABLES[s], is_prefill=n > 1,
                             sample=True) for s, start, n in entries)
        mb = MicroBatch(mb_id, pieces)
        t = mb.num_tokens
        q, k, v = (torch.randn(1, h, t, D, generator=gen).to(device, dtype) for h in (HQ, HKV, HKV))
        inputs = build_stage_inputs(mb, block_size=block_size, device=device)
        ctx = prepare(backend, cache, inputs)
        out, _ = paged_attention(SimpleNamespace(layer_idx=0), q, k, v, None, scaling=0.3, sliding_window=window,
                                 pp_attn=ctx)
        outs.append(out[0].float().cpu())  # [T, HQ, D]
    return outs


@pytest.mark.parametrize("window", [None, 5])
def test_triton_backend_matches_sdpa(window):
    pytest.importorskip("triton")
    want = _run("sdpa", window=window, device=CPU)
    got = _run("triton", window=window, device=DEVICE)
    for mb_id, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=lambda m: f"micro-batch {mb_id}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs CUDA")
def test_flash_backend_matches_sdpa():
    pytest.importorskip("flash_attn")
    # flash-attn's paged kernel needs blocks of 256 tokens and fp16/bf16.
    want = _run("sdpa", window=None, device=CPU)
    got = _run("flash", window=None, device=DEVICE, block_size=256, dtype=torch.float16)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=5e-3, rtol=5e-3)


F32 = torch.float32


def test_auto_is_sdpa_on_the_cpu():
    assert choose_backend("auto", CPU, 16, dtype=F32) == "sdpa"
    assert choose_backend("sdpa", CPU, 4, dtype=F32) == "sdpa"


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_backend("triton", CPU, 16, dtype=F32) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        choose_backend("triton", CPU, 16, dtype=F32)


@pytest.mark.parametrize("block_size", [4, 24])
def test_triton_needs_a_power_of_two_block_of_at_least_16(monkeypatch, block_size):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="cache.block_size"):
        choose_backend("triton", CPU, block_size, dtype=F32)


def test_flash_needs_cuda():
    with pytest.raises(ValueError, match="device=cuda"):
        choose_backend("flash", CPU, 256, dtype=torch.bfloat16)


def _pretend_flash_imports(monkeypatch):
    from stages.attention import flash

    monkeypatch.setattr(flash, "available", lambda: True)


def test_auto_on_cuda_never_picks_flash_for_fp32(monkeypatch):
    # flash-attn rejects fp32: auto falls back to triton, and an explicit flash says what to change.
    _pretend_flash_imports(monkeypatch)
    cuda = torch.device("cuda", 0)
    assert choose_backend("auto", cuda, 256, dtype=torch.bfloat16) == "flash"
    assert choose_backend("auto", cuda, 256, dtype=torch.float16) == "flash"
    assert choose_backend("auto", cuda, 256, dtype=F32) == "triton"
    assert choose_backend("auto", cuda, 16, dtype=torch.bfloat16) == "triton"  # flash needs blocks of 256
    with pytest.raises(ValueError, match="dtype=bfloat16"):
        choose_backend("flash", cuda, 256, dtype=F32)


def test_auto_on_cuda_is_sdpa_when_no_kernel_fits(monkeypatch):
    _pretend_flash_imports(monkeypatch)
    assert choose_backend("auto", torch.device("cuda", 0), 8, dtype=F32) == "sdpa"


def test_each_backend_is_a_record_from_its_own_file():
    for name, module, capturable in (("sdpa", "sdpa", False), ("triton", "triton_paged", True),
                                     ("flash", "flash", True)):
        record = backend(name)
        assert isinstance(record, attention.AttentionBackend) and record.name == name
        assert record.capturable is capturable
        assert record.attend.__module__ == record.prepare.__module__ == f"stages.attention.{module}"
    with pytest.raises(ValueError, match="model.attention='nope'"):
        backend("nope")


def test_no_backend_name_is_compared_outside_its_record():
    # The backend's name decides nothing by string comparison in the device plane: the record does.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?["'](sdpa|triton|flash)["']|["'](sdpa|triton|flash)["']\s*(==|!=)""")
    hits = [f"{path.relative_to(root)}:{n}" for folder in ("stages", "launch") for path in (root / folder).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
