"""Where a job's model comes from: the folder named by ``model.path``, or the embedded default, and its tokenizer.

Used by the job (``launch/rank_job.py``) and the simulator (``pp_runtime/sim/sim_job.py``) alike, before any rank waits
on another: a missing folder raises FileNotFoundError naming ``model.path``.
"""

from __future__ import annotations

from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def model_dir(path: str | None) -> str:
    """The Hugging Face model folder for ``model.path`` (None: the embedded SmolLM2-135M-Instruct)."""
    if path is None:
        from pp_runtime.model.default_model import default_model_dir

        return str(default_model_dir())
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model.path={path!r} is not a Hugging Face model folder (no config.json there); "
                                f"point model.path at one, or unset it for the default")
    return path


def load_tokenizer(folder: str):
    """The folder's tokenizer, or None when it has none (token-id workloads only, e.g. random-weight models)."""
    if not any((Path(folder) / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def eos_token_ids(hf_config, folder: str | None) -> list[int]:
    """The model's end tokens, sorted: ``eos_token_id`` of config.json and of generation_config.json together (an
    int or a list in either). Hugging Face ``generate`` and vLLM stop on generation_config.json's, where many chat
    models put their end-of-turn token alone. ``folder`` None (a shape preset): config.json's only."""
    ids: set[int] = set()
    sources = [getattr(hf_config, "eos_token_id", None)]
    if folder is not None and (Path(folder) / "generation_config.json").exists():
        import json

        try:
            sources.append(json.loads((Path(folder) / "generation_config.json").read_text()).get("eos_token_id"))
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{folder}/generation_config.json is not a JSON object ({exc}); repair or remove it")
    for eos in sources:
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return sorted(ids)
