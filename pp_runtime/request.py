"""What a user asks for: a request with its prompt and sampling parameters, validated up front."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass


class RequestError(ValueError):
    """A request is invalid; the message names the request id and the field to change."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick and when to stop. temperature 0 is greedy; top_k 0 and top_p 1 turn those filters off."""

    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    # Seed of a sampled request's draws; None: drawn from the run's seed (``with_run_seed``), new for every run
    # directory and kept when it resumes.
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Request:
    id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = SamplingParams()
    # Seconds after the job starts at which the request arrives (0: offline, all at once).
    arrival_s: float = 0.0
    # Text shown with the answer: the prompt, or a chat's last message.
    prompt: str | None = None
    # For a line of an OpenAI Batch API file: its endpoint ("/v1/chat/completions" or "/v1/completions") and the
    # body's "model"; its outputs.jsonl line then takes that API's output shape (pp_runtime.rundir.outputs_file).
    api_url: str | None = None
    api_model: str | None = None

    def __repr__(self) -> str:
        return f"Request({self.id!r}, prompt={len(self.prompt_token_ids)} tok, max_tokens={self.params.max_tokens})"


def validate_request(req: Request, *, max_model_len: int, vocab_size: int, model_limit: int | None = None) -> None:
    """Raise RequestError naming the request and the field to change if the request cannot run.

    ``model_limit``: the model's own context length (positions); when the prompt fits it but not ``max_model_len``
    (model.max_model_len set lower), the message names model.max_model_len as what to change. None: the same as
    ``max_model_len``."""
    p, rid = req.params, req.id
    n = len(req.prompt_token_ids)
    if n == 0:
        raise RequestError(f"request {rid!r}: the prompt is empty; give a non-empty 'prompt' or 'prompt_token_ids'")
    if n >= max_model_len:
        limit = max_model_len if model_limit is None else model_limit
        if n < limit:  # model.max_model_len, set below the model's own limit, is what refuses it
            fix = (f"raise model.max_model_len to at least {n + 1} (the model's own limit is {limit} positions; null "
                   f"takes it), or shorten the prompt")
        elif max_model_len < limit:
            fix = f"shorten the prompt: even the model's own limit, {limit} positions, allows at most {limit - 1}"
        else:
            fix = "shorten the prompt (this is the model's own limit, max_position_embeddings)"
        raise RequestError(
            f"request {rid!r}: prompt has {n} tokens but the job allows at most {max_model_len - 1} "
            f"(model.max_model_len={max_model_len} includes at least one output token); {fix}")
    bad = [t for t in req.prompt_token_ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"request {rid!r}: token id {bad[0]} in 'prompt_token_ids' is outside the "
                           f"vocabulary [0, {vocab_size})")
    if p.max_tokens < 1:
        raise RequestError(f"request {rid!r}: 'max_tokens'={p.max_tokens} must be >= 1")
    if not math.isfinite(p.temperature) or p.temperature < 0:
        raise RequestError(f"request {rid!r}: 'temperature'={p.temperature} must be >= 0 (0 is greedy)")
    if not (math.isfinite(p.top_p) and 0 < p.top_p <= 1):
        raise RequestError(f"request {rid!r}: 'top_p'={p.top_p} must be in (0, 1]")
    if p.top_k < 0:
        raise RequestError(f"request {rid!r}: 'top_k'={p.top_k} must be >= 0 (0 turns it off)")
    if not math.isfinite(req.arrival_s) or req.arrival_s < 0:
        raise RequestError(f"request {rid!r}: 'arrival_s'={req.arrival_s} must be a finite number >= 0")


def with_run_seed(req: Request, run_seed: int) -> Request:
    """``req`` with the seed its draws use: an unseeded sampled request gets one hashed from ``run_seed`` and its
    id (a 63-bit number, so it reproduces no request seeded by hand and no other run's draws); seeded and greedy
    requests are returned as they are."""
    if req.params.seed is not None or req.params.greedy:
        return req
    digest = hashlib.sha256(f"{run_seed}:{req.id}".encode()).digest()
    seed = int.from_bytes(digest[:8], "little") >> 1
    return dataclasses.replace(req, params=dataclasses.replace(req.params, seed=seed))
