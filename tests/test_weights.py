"""load_owned_weights: a stage's modules get exactly the Hugging Face model's tensors, and nothing else loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from stages.weights import load_owned_weights
from tests.tiny_models import make_tiny_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama") / "m", num_layers=2)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2") / "m", num_layers=2)


def _hf_config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _reference(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _meta_model(hf_config, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)


def _owned(full, paths: list[str]) -> dict[str, nn.Module]:
    owned = {p: full.get_submodule(p) for p in paths}
    for module in owned.values():
        module.to_empty(device=CPU)
        with torch.no_grad():
            for t in module.parameters():
                t.fill_(float("nan"))  # anything left unloaded fails the comparison
    return owned


def _assert_same_tensors(owned: dict[str, nn.Module], ref: nn.Module) -> None:
    ref_state = ref.state_dict()
    for path, module in owned.items():
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, ref_state[f"{path}.{name}"], rtol=0, atol=0,
                                       msg=lambda m: f"{path}.{name}: {m}")


def test_last_stage_of_tied_llama(llama_dir):
    cfg = _hf_config(llama_dir)
    assert cfg.tie_word_embeddings
    with safe_open(llama_dir / "model.safetensors", framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # the head must come from the embedding
    full = _meta_model(cfg)
    owned = _owned(full, ["model.layers.1", "model.norm", "lm_head"])
    load_owned_weights(str(llama_dir), owned, cfg, device=CPU, dtype=torch.float32, embed_name="model.embed_tokens")
    ref = _reference(llama_dir)
    _assert_same_tensors(owned, ref)
    torch.testing.assert_close(owned["lm_head"].weight, ref.model.embed_tokens.weight, rtol=0, atol=0)
    # Modules the stage does not own never leave the meta device.
    assert full.model.layers[0].self_attn.q_proj.weight.is_meta
    assert full.model.embed_tokens.weight.is_meta


def test_first_stage_of_llama(llama_dir):
    cfg = _hf_config(llama_dir)
    owned = _owned(_meta_model(cfg), ["model.embed_tokens", "model.layers.0"])
    load_owned_weights(str(llama_dir), owned, cfg, device=CPU, dtype=torch.float32, embed_name="model.embed_tokens")
    _assert_same_tensors(owned, _reference(llama_dir))


def test_gpt2_with_learned_positions_and_tied_head(gpt2_dir):
    cfg = _hf_config(gpt2_dir)
    owned = _owned(_meta_model(cfg), ["transformer.wte", "transformer.wpe", "transformer.h.1", "transformer.ln_f",
                                      "lm_head"])
    load_owned_weights(str(gpt2_dir), owned, cfg, device=CPU, dtype=torch.float32, embed_name="transformer.wte")
    ref = _reference(gpt2_dir)
    _assert_same_tensors(owned, ref)
    torch.testing.assert_close(owned["lm_head"].weight, ref.transformer.wte.weight, rtol=0, atol=0)


def test_checkpoint_without_base_prefix(gpt2_dir, tmp_path):
    # Original GPT-2 checkpoints store "h.0.attn..." rather than "transformer.h.0.attn...".
    with safe_open(gpt2_dir / "model.safetensors", framework="pt") as f:
        tensors = {k.removeprefix("transformer."): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = _hf_config(gpt2_dir)
    owned = _owned(_meta_model(cfg), ["transformer.h.0", "lm_head"])
    load_owned_weights(str(tmp_path), owned, cfg, device=CPU, dtype=torch.float32, embed_name="transformer.wte")
    ref = _reference(gpt2_dir)
    _assert_same_tensors(owned, ref)
    torch.testing.assert_close(owned["lm_head"].weight, ref.transformer.wte.weight, rtol=0, atol=0)


def test_sharded_checkpoint(llama_dir, tmp_path):
    ref = _reference(llama_dir)
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    cfg = _hf_config(tmp_path)
    owned = _owned(_meta_model(cfg), ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm",
                                      "lm_head"])
    load_owned_weights(str(tmp_path), owned, cfg, device=CPU, dtype=torch.float32, embed_name="model.embed_tokens")
    _assert_same_tensors(owned, ref)


def test_loads_in_the_requested_dtype(llama_dir):
    cfg = _hf_config(llama_dir)
    owned = _owned(_meta_model(cfg, dtype=torch.bfloat16), ["model.layers.0"])
    load_owned_weights(str(llama_dir), owned, cfg, device=CPU, dtype=torch.bfloat16, embed_name="model.embed_tokens")
    ref = _reference(llama_dir).model.layers[0]
    got = owned["model.layers.0"].mlp.up_proj.weight
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref.mlp.up_proj.weight.to(torch.bfloat16), rtol=0, atol=0)


def test_missing_tensor_raises_key_error_naming_it(llama_dir, tmp_path):
    with safe_open(llama_dir / "model.safetensors", framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = _hf_config(llama_dir)
    owned = _owned(_meta_model(cfg), ["model.layers.0", "model.layers.1"])
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_owned_weights(str(tmp_path), owned, cfg, device=CPU, dtype=torch.float32,
                           embed_name="model.embed_tokens")


def test_layer_beyond_the_checkpoint_raises_key_error(llama_dir):
    from transformers import LlamaConfig

    cfg = _hf_config(llama_dir)
    bigger = LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 4})
    owned = _owned(_meta_model(bigger), ["model.layers.3"])
    with pytest.raises(KeyError, match=r"model\.layers\.3\."):
        load_owned_weights(str(llama_dir), owned, cfg, device=CPU, dtype=torch.float32,
                           embed_name="model.embed_tokens")


def test_untied_head_without_its_tensor_raises(llama_dir):
    from transformers import LlamaConfig

    cfg = _hf_config(llama_dir)
    untied = LlamaConfig(**{**cfg.to_dict(), "tie_word_embeddings": False})
    owned = _owned(_meta_model(untied), ["lm_head"])
    with pytest.raises(KeyError, match=r"lm_head\.weight"):
        load_owned_weights(str(llama_dir), owned, untied, device=CPU, dtype=torch.float32,
                           embed_name="model.embed_tokens")


def test_shape_mismatch_raises(llama_dir):
    cfg = _hf_config(llama_dir)
    wrong = nn.Linear(cfg.hidden_size, 10, bias=False)  # the checkpoint's gate_proj is [128, 64]
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \(128, 64\).*\(10, 64\)"):
        load_owned_weights(str(llama_dir), {"model.layers.0.mlp.gate_proj": wrong}, cfg, device=CPU,
                           dtype=torch.float32, embed_name="model.embed_tokens")


def test_folder_without_safetensors(llama_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_owned_weights(str(tmp_path), {}, _hf_config(llama_dir), device=CPU, dtype=torch.float32,
                           embed_name="model.embed_tokens")
