"""Load only a stage's own weights from a Hugging Face safetensors folder (single file or sharded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


def _index(model_dir: Path) -> dict[str, str]:
    """Tensor name -> file name."""
    sharded = model_dir / "model.safetensors.index.json"
    if sharded.exists():
        return json.loads(sharded.read_text())["weight_map"]
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {model_dir}; "
                                f"model.path must be a Hugging Face folder saved with safetensors")
    with safe_open(single, framework="pt") as f:
        return {name: single.name for name in f.keys()}


def load_owned_weights(model_dir: str, owned: dict[str, nn.Module], hf_config, *, device: torch.device,
                       dtype: torch.dtype, embed_name: str, rows: dict[str, slice] | None = None) -> None:
    """Fill every parameter and persistent buffer of ``owned`` (full-model path -> module) from the files.

    ``rows``: full-model path -> the rows (first dimension) of that module's tensors to load, for a module that
    holds part of them (a vocabulary-parallel LM head). A tied LM head without its own tensor is read from the
    embedding. Raises if anything stays unloaded or a tensor's shape differs from the module's.
    """
    rows = rows or {}
    model_dir = Path(model_dir)
    where = _index(model_dir)
    wanted: dict[str, tuple[nn.Module, str, slice | None]] = {}
    for path, module in owned.items():
        for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
            owner_path, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if leaf in getattr(owner, "_non_persistent_buffers_set", set()):
                continue
            wanted[f"{path}.{name}"] = (owner, leaf, rows.get(path))
    by_file: dict[str, list[tuple[str, str]]] = {}
    missing = []
    for full_name in wanted:
        key = _find_key(full_name, where, hf_config, embed_name)
        if key is None:
            missing.append(full_name)
        else:
            by_file.setdefault(where[key], []).append((full_name, key))
    if missing:
        raise KeyError(f"{model_dir}: no tensors for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for file, names in by_file.items():
        with safe_open(model_dir / file, framework="pt", device=str(device)) as f:
            for full_name, key in names:
                owner, leaf, part = wanted[full_name]
                current = getattr(owner, leaf)
                tensor = f.get_tensor(key) if part is None else f.get_slice(key)[part]
                tensor = tensor.to(dtype=current.dtype if not current.is_floating_point() else dtype)
                if tensor.shape != current.shape:
                    raise ValueError(f"{model_dir}: {key} has shape {tuple(tensor.shape)}, the model expects "
                                     f"{tuple(current.shape)}")
                with torch.no_grad():
                    current.copy_(tensor)


def _find_key(full_name: str, where: dict[str, str], hf_config, embed_name: str) -> str | None:
    if full_name in where:
        return full_name
    # Some checkpoints (e.g. original GPT-2) store the base model without its "transformer."/"model." prefix.
    _, _, rest = full_name.partition(".")
    if rest in where:
        return rest
    if full_name.startswith("lm_head.") and getattr(hf_config, "tie_word_embeddings", False):
        tied = embed_name + "." + full_name.split(".", 1)[1]
        return _find_key(tied, where, hf_config, embed_name) if tied != full_name else None
    return None
