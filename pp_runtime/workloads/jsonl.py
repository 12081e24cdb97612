"""Requests from a JSON-lines file (``workload=jsonl``), UTF-8, one object per line, blank lines skipped.

Two shapes, one per file:

- pp-runtime's own lines::

    {"id": "q1", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16, "temperature": 0.7,
     "top_p": 0.9, "top_k": 50, "seed": 1, "ignore_eos": false, "stop_token_ids": [2], "arrival_s": 0.5}

  ``id`` and exactly one of ``messages`` (a chat: the model's chat template is applied, with the generation
  prompt), ``prompt`` (text, encoded as is) or ``prompt_token_ids`` are required; everything else is optional
  (``max_tokens`` defaults to ``workload.max_tokens``, ``arrival_s`` to 0, ``seed`` may be null: the run's
  seed then, see ``pp_runtime.request``).
- OpenAI Batch API lines, read as they are (``custom_id`` is the id)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [...], "max_tokens": 16, "temperature": 0.7}}

  ``url`` is ``/v1/chat/completions`` (``messages``) or ``/v1/completions`` (``prompt``: text or token ids);
  ``max_completion_tokens`` is taken for ``max_tokens``; ``top_k``, ``ignore_eos`` and ``stop_token_ids`` are
  accepted as vLLM does; ``n`` must be 1. Their outputs.jsonl lines follow the Batch API's output shape.

Types are strict: no strings for numbers, no booleans for integers; integers are accepted for floats.
With ``workload.arrival=poisson`` the requests arrive in file order at ``workload.rate`` per second instead,
and no line may set ``arrival_s``. Every error names the file, the line, the request id and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, RequestError, SamplingParams, validate_request
from pp_runtime.workloads.arrivals import arrival_times

_STR, _INT, _FLOAT, _BOOL, _INTS, _CHAT = ("a string", "an integer", "a number", "true or false",
                                           "a list of integers", "a list of {\"role\": ..., \"content\": ...}")
_FIELDS = {
    "id": _STR, "messages": _CHAT, "prompt": _STR, "prompt_token_ids": _INTS, "max_tokens": _INT,
    "temperature": _FLOAT, "top_p": _FLOAT, "top_k": _INT, "seed": _INT, "ignore_eos": _BOOL,
    "stop_token_ids": _INTS, "arrival_s": _FLOAT,
}
_NULLABLE = {"seed"}
_PROMPTS = ("messages", "prompt", "prompt_token_ids")
CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"
# Batch API body fields read (others are refused by name); model, n, stream and user are checked, not used.
_BODY = ("model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
         "seed", "ignore_eos", "stop_token_ids", "n", "stream", "user")


def load_jsonl(cfg: WorkloadConfig, *, tokenizer=None, max_model_len: int, vocab_size: int,
               model_limit: int | None = None) -> list[Request]:
    """Read and validate every request in ``cfg.path`` (see the module docstring for the format)."""
    path = cfg.path
    if not path or not os.path.isfile(path):
        raise ConfigError(f"workload.path={path!r}: no such file; point it at a JSON-lines request file")
    if cfg.arrival == "trace":
        raise ConfigError("workload.arrival='trace' is invalid for workload=jsonl: give each line an 'arrival_s' "
                          "field and use workload.arrival=all, or use poisson")
    requests: list[Request] = []
    lines: dict[str, int] = {}  # request id -> line it was defined on
    shape: tuple[str, int] | None = None  # (the file's shape, the line that set it)
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        req = _parse(line, where, cfg, tokenizer)
        line_shape = "OpenAI Batch API" if req.api_url else "pp-runtime"
        if shape is None:
            shape = (line_shape, lineno)
        elif shape[0] != line_shape:
            raise RequestError(f"{where}: a {line_shape} line, but line {shape[1]} is a {shape[0]} line; one file "
                               f"holds one shape")
        if req.id in lines:
            field = "custom_id" if req.api_url else "id"
            raise RequestError(f"{where}: request {req.id!r}: field {field!r} repeats the id on line {lines[req.id]}; "
                               f"ids must be unique")
        try:
            validate_request(req, max_model_len=max_model_len, vocab_size=vocab_size, model_limit=model_limit)
        except RequestError as e:
            raise RequestError(f"{where}: {e}") from None
        lines[req.id] = lineno
        requests.append(req)
    if not requests:
        raise RequestError(f"{path}: the file holds no requests; write one JSON object per line")
    if cfg.arrival == "poisson":
        times = arrival_times(cfg, len(requests))
        requests = [dataclasses.replace(r, arrival_s=t) for r, t in zip(requests, times)]
    return requests


def _lines(path: str):
    """(line number, text) of each line, decoded as UTF-8 (a UTF-8 byte-order mark is allowed); raises
    RequestError naming the file and line of the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise RequestError(f"{path}:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                                   f"request files are UTF-8: save it as UTF-8")
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"{path}:{lineno}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8 "
                                   f"(a Latin-1 or UTF-16 file?); request files are UTF-8: save it as UTF-8") from None


def _parse(line: str, where: str, cfg: WorkloadConfig, tokenizer) -> Request:
    try:
        obj = json.loads(line.rstrip("\r\n"))  # an error at the line's end is then reported on it, not after it
    except json.JSONDecodeError as e:
        raise RequestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise RequestError(f"{where}: expected a JSON object {{\"id\": ..., \"messages\": ...}}, got {_short(obj)}")
    url = model = None
    if "custom_id" in obj:
        obj, url, model = _from_batch_line(obj, where)
    if "id" not in obj:
        raise RequestError(f"{where}: field 'id' is missing; every request needs a unique string 'id' (or give an "
                           f"OpenAI Batch API line with 'custom_id')")
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
    given = [k for k in _PROMPTS if k in obj]
    if len(given) != 1:
        raise RequestError(f"{at}: give exactly one of 'messages', 'prompt' or 'prompt_token_ids', not "
                           + (f"both {' and '.join(repr(k) for k in given)}" if given else "neither"))
    shown = None
    if "messages" in obj:
        ids, shown = chat_token_ids(tokenizer, obj["messages"], at=at, url=url), obj["messages"][-1]["content"]
    elif "prompt" in obj:
        if tokenizer is None:
            raise RequestError(f"{at}: field 'prompt' is text but the model has no tokenizer{_NO_TOKENIZER}; give "
                               f"{_token_ids_field(url)} instead")
        ids, shown = tuple(int(t) for t in tokenizer(obj["prompt"])["input_ids"]), obj["prompt"]
    else:
        ids = tuple(obj["prompt_token_ids"])
    params = SamplingParams(
        max_tokens=obj.get("max_tokens", cfg.max_tokens), temperature=float(obj.get("temperature", 0.0)),
        top_p=float(obj.get("top_p", 1.0)), top_k=obj.get("top_k", 0), seed=obj.get("seed"),
        ignore_eos=obj.get("ignore_eos", False), stop_token_ids=tuple(obj.get("stop_token_ids", ())))
    return Request(rid, ids, params, arrival_s=float(obj.get("arrival_s", 0.0)), prompt=shown, api_url=url,
                   api_model=model)


_NO_TOKENIZER = " (a sim.model_shape preset, or a model folder without tokenizer files)"


def _token_ids_field(url: str | None) -> str:
    """Where a request line gives its prompt as token ids: the only prompt a model without a tokenizer takes."""
    if url is None:
        return "the prompt as token ids, 'prompt_token_ids': [...]"
    return "the prompt as token ids: a /v1/completions line whose body 'prompt' is a list of token ids"


def chat_token_ids(tokenizer, messages: list[dict], *, at: str = "the chat",
                   url: str | None = None) -> tuple[int, ...]:
    """Token ids of ``messages`` through the tokenizer's chat template, with the generation prompt.

    Raises RequestError (naming ``at``) when the model has no tokenizer (naming token ids, the only prompt it
    takes: ``prompt_token_ids``, or for an OpenAI Batch API line of ``url``, a /v1/completions line) or no chat
    template.
    """
    if tokenizer is None:
        raise RequestError(f"{at}: field 'messages' needs the model's chat template, but the model has no "
                           f"tokenizer{_NO_TOKENIZER}; give {_token_ids_field(url)} instead")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError(f"{at}: field 'messages' needs the model's chat template, but the model has a tokenizer "
                           f"without a chat template (tokenizer_config.json); send the text as 'prompt' (encoded as "
                           f"is) or 'prompt_token_ids', or use a chat model")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding (return_dict=True by default)
        ids = ids["input_ids"]
    return tuple(int(t) for t in ids)


def _from_batch_line(obj: dict, where: str) -> tuple[dict, str, str | None]:
    """An OpenAI Batch API line as pp-runtime's fields, its url and the body's model; RequestError names the field."""
    rid = obj["custom_id"]
    at = f"{where}: request {_short(rid)}"
    unknown = [k for k in obj if k not in ("custom_id", "method", "url", "body")]
    if unknown:
        raise RequestError(f"{at}: unknown field {unknown[0]!r} in an OpenAI Batch API line; its fields are "
                           f"custom_id, method, url, body")
    if obj.get("method", "POST") != "POST":
        raise RequestError(f"{at}: field 'method'={_short(obj.get('method'))} must be \"POST\"")
    url = obj.get("url")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        raise RequestError(f"{at}: field 'url'={_short(url)} must be {CHAT_URL!r} or {COMPLETIONS_URL!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise RequestError(f"{at}: field 'body' must be a JSON object with the request, got {_short(body)}")
    for name in body:
        if name not in _BODY:
            raise RequestError(f"{at}: field 'body.{name}' is not supported; supported: {', '.join(_BODY)}")
    if body.get("n", 1) != 1 or body.get("stream", False) is not False:
        raise RequestError(f"{at}: fields 'body.n' / 'body.stream' must be 1 / false: one answer per request")
    want, other = ("messages", "prompt") if url == CHAT_URL else ("prompt", "messages")
    if other in body or want not in body:
        raise RequestError(f"{at}: url {url!r} takes 'body.{want}'"
                           + (f", not 'body.{other}'" if other in body else ""))
    fields = {"id": rid}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos", "stop_token_ids"):
        if name in body:
            fields[name] = body[name]
    if "max_completion_tokens" in body:
        fields["max_tokens"] = body["max_completion_tokens"]
    prompt = body[want]
    if want == "prompt" and isinstance(prompt, list):  # the completions API takes token ids as the prompt too
        fields["prompt_token_ids"] = prompt
    else:
        fields[want] = prompt
    model = body.get("model")
    return fields, url, model if isinstance(model, str) else None


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
    if kind == _CHAT:
        return (isinstance(value, list) and bool(value) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value))
    return isinstance(value, list) and all(_has_type(v, _INT) for v in value)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
