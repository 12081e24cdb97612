"""Small randomly initialised Hugging Face models, saved as local folders for end-to-end tests (fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 320


def tiny_config(arch: str, *, num_layers: int = 4):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                  num_attention_heads=4, max_position_embeddings=256, initializer_range=0.3, eos_token_id=1,
                  bos_token_id=0)
    if arch == "llama":  # grouped-query attention and tied embeddings
        return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if arch == "qwen2":  # attention bias
        return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False, **common)
    if arch == "mistral":  # sliding window shorter than the prompts
        return MistralConfig(num_key_value_heads=1, sliding_window=12, tie_word_embeddings=False, **common)
    if arch == "gpt2":  # learned positions
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=num_layers, n_head=4, n_positions=256,
                          initializer_range=0.3, eos_token_id=1, bos_token_id=0)
    raise ValueError(arch)


def make_tiny_model(arch: str, path: Path, *, num_layers: int = 4, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers=num_layers), dtype=torch.float32)
    model.save_pretrained(path)
    return path


def reference_generate(model_dir: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy Hugging Face ``generate`` on one prompt alone, without stopping on EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def write_jsonl(path: Path, requests: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path
