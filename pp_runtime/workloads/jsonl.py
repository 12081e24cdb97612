"""Requests from a JSON-lines file (``workload=jsonl``), one object per line, blank lines skipped::

    {"id": "q1", "prompt": "Hello", "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 50,
     "seed": 1, "ignore_eos": false, "stop_token_ids": [2], "arrival_s": 0.5}

``id`` and exactly one of ``prompt`` (text, needs a tokenizer) / ``prompt_token_ids`` are required; everything
else is optional (``max_tokens`` defaults to ``workload.max_tokens``, ``arrival_s`` to 0, ``seed`` may be null).
Types are strict: no strings for numbers, no booleans for integers; integers are accepted for floats.
With ``workload.arrival=poisson`` the requests arrive in file order at ``workload.rate`` per second instead,
and no line may set ``arrival_s``. Every error names the file, the line, the request id and the field.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, RequestError, SamplingParams, validate_request
from pp_runtime.workloads.arrivals import arrival_times

_STR, _INT, _FLOAT, _BOOL, _INTS = "a string", "an integer", "a number", "true or false", "a list of integers"
_FIELDS = {
    "id": _STR, "prompt": _STR, "prompt_token_ids": _INTS, "max_tokens": _INT, "temperature": _FLOAT,
    "top_p": _FLOAT, "top_k": _INT, "seed": _INT, "ignore_eos": _BOOL, "stop_token_ids": _INTS, "arrival_s": _FLOAT,
}
_NULLABLE = {"seed"}


def load_jsonl(cfg: WorkloadConfig, *, tokenizer=None, max_model_len: int, vocab_size: int) -> list[Request]:
    """Read and validate every request in ``cfg.path`` (see the module docstring for the format)."""
    path = cfg.path
    if not path or not os.path.isfile(path):
        raise ConfigError(f"workload.path={path!r}: no such file; point it at a JSON-lines request file")
    if cfg.arrival == "trace":
        raise ConfigError("workload.arrival='trace' is invalid for workload=jsonl: give each line an 'arrival_s' "
                          "field and use workload.arrival=all, or use poisson")
    requests: list[Request] = []
    lines: dict[str, int] = {}  # request id -> line it was defined on
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            req = _parse(line, where, cfg, tokenizer)
            if req.id in lines:
                raise RequestError(f"{where}: request {req.id!r}: field 'id' repeats the id on line {lines[req.id]}; "
                                   f"ids must be unique")
            try:
                validate_request(req, max_model_len=max_model_len, vocab_size=vocab_size)
            except RequestError as e:
                raise RequestError(f"{where}: {e}") from None
            lines[req.id] = lineno
            requests.append(req)
    if not requests:
        raise RequestError(f"{path}: the file holds no requests; write one JSON object per line")
    if cfg.arrival == "poisson":
        times = arrival_times(cfg, len(requests))
        requests = [Request(r.id, r.prompt_token_ids, r.params, t, r.prompt) for r, t in zip(requests, times)]
    return requests


def _parse(line: str, where: str, cfg: WorkloadConfig, tokenizer) -> Request:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RequestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise RequestError(f"{where}: expected a JSON object {{\"id\": ..., \"prompt\": ...}}, got {_short(obj)}")
    if "id" not in obj:
        raise RequestError(f"{where}: field 'id' is missing; every request needs a unique string 'id'")
    rid = obj["id"]
    if not isinstance(rid, str) or not rid:
        raise RequestError(f"{where}: field 'id' must be a non-empty string, got {_short(rid)}")
    at = f"{where}: request {rid!r}"
    for name, value in obj.items():
        if name not in _FIELDS:
            raise RequestError(f"{at}: unknown field {name!r}; allowed fields are {', '.join(_FIELDS)}")
        if not (value is None and name in _NULLABLE) and not _has_type(value, _FIELDS[name]):
            raise RequestError(f"{at}: field {name!r} must be {_FIELDS[name]}, got {_short(value)}")
    if cfg.arrival == "poisson" and "arrival_s" in obj:
        raise RequestError(f"{at}: field 'arrival_s' conflicts with workload.arrival='poisson'; remove it or use "
                           f"workload.arrival=all")
    if obj.get("arrival_s", 0.0) < 0:
        raise RequestError(f"{at}: field 'arrival_s'={obj['arrival_s']} must be >= 0 (seconds after the job starts)")
    has_text, has_ids = "prompt" in obj, "prompt_token_ids" in obj
    if has_text == has_ids:
        raise RequestError(f"{at}: field 'prompt' / 'prompt_token_ids': give exactly one of the two, not "
                           f"{'both' if has_text else 'neither'}")
    if has_text:
        if tokenizer is None:
            raise RequestError(f"{at}: field 'prompt' is text but no tokenizer is loaded; give 'prompt_token_ids' "
                               f"instead")
        ids = tuple(int(t) for t in tokenizer(obj["prompt"])["input_ids"])
    else:
        ids = tuple(obj["prompt_token_ids"])
    params = SamplingParams(
        max_tokens=obj.get("max_tokens", cfg.max_tokens), temperature=float(obj.get("temperature", 0.0)),
        top_p=float(obj.get("top_p", 1.0)), top_k=obj.get("top_k", 0), seed=obj.get("seed"),
        ignore_eos=obj.get("ignore_eos", False), stop_token_ids=tuple(obj.get("stop_token_ids", ())))
    return Request(rid, ids, params, arrival_s=float(obj.get("arrival_s", 0.0)), prompt=obj.get("prompt"))


def _has_type(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            return False
    return isinstance(value, list) and all(_has_type(v, _INT) for v in value)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
