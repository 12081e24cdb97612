"""Workloads: where requests come from. ``load_workload`` picks the loader named by ``workload.kind``.

Runs on every rank before any process group exists, so every loader is deterministic given
``workload.seed`` and every request is validated here, before any rank waits on another.
"""

from __future__ import annotations

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, validate_request
from pp_runtime.workloads.default import load_default
from pp_runtime.workloads.jsonl import load_jsonl
from pp_runtime.workloads.synthetic import load_synthetic
from pp_runtime.workloads.trace import load_trace


def load_workload(cfg: WorkloadConfig, *, tokenizer=None, max_model_len: int, vocab_size: int,
                  model_limit: int | None = None) -> list[Request]:
    """The requests of workload ``cfg.kind``, each checked by ``validate_request`` (``model_limit``: the model's own
    context length, for its message when model.max_model_len is set lower; None: ``max_model_len``).

    ``tokenizer`` (a Hugging Face tokenizer) is needed by ``default`` and by text prompts in ``jsonl``.
    Raises ``ConfigError`` for a bad setting (naming the ``workload.*`` key) and ``RequestError`` for a bad
    request (naming the request id and field, and for files the file and line).
    """
    if cfg.kind == "default":
        requests = load_default(cfg, tokenizer=tokenizer)
    elif cfg.kind == "jsonl":
        requests = load_jsonl(cfg, tokenizer=tokenizer, max_model_len=max_model_len, vocab_size=vocab_size,
                              model_limit=model_limit)
    elif cfg.kind == "trace":
        requests = load_trace(cfg, max_model_len=max_model_len, vocab_size=vocab_size)
    elif cfg.kind == "synthetic":
        requests = load_synthetic(cfg, max_model_len=max_model_len, vocab_size=vocab_size)
    else:
        raise ConfigError(f"workload.kind={cfg.kind!r} is invalid: use default, jsonl, trace or synthetic")
    for req in requests:
        validate_request(req, max_model_len=max_model_len, vocab_size=vocab_size, model_limit=model_limit)
    return requests


__all__ = ["load_workload"]
