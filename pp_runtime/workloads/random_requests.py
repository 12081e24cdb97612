"""Requests made of random tokens from (prompt length, output length) pairs: the trace and synthetic workloads.

Every random draw comes from ``rng(seed, stream)``: one independent generator per purpose (sampling rows,
lengths, token ids, arrivals), so that changing, say, the arrival process leaves the prompts as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pp_runtime.config import ConfigError
from pp_runtime.request import Request, SamplingParams

log = logging.getLogger(__name__)

# Token ids below this are left out of random prompts: they are usually special tokens (pad/BOS/EOS).
FIRST_RANDOM_TOKEN = 3

SAMPLE, LENGTHS, TOKENS, ARRIVALS = range(4)


def rng(seed: int, stream: int) -> np.random.Generator:
    """The generator for one purpose (``SAMPLE``, ``LENGTHS``, ``TOKENS``, ``ARRIVALS``) under ``workload.seed``."""
    if seed < 0:
        raise ConfigError(f"workload.seed={seed} is invalid: must be >= 0")
    return np.random.default_rng([stream, seed])


def requests_from_lengths(prompt_lens: Sequence[int], output_lens: Sequence[int], arrivals: Sequence[float], *,
                          prefix: str, seed: int, max_model_len: int, vocab_size: int) -> list[Request]:
    """One request per (prompt, output) length pair, ids ``f"{prefix}-{i}"``, with random prompt tokens.

    Outputs are exact: ``ignore_eos=True`` and ``max_tokens`` = the output length. Pairs that do not fit
    ``max_model_len`` are trimmed (the prompt first, keeping at least one token; an output of
    ``max_model_len`` or more is cut to ``max_model_len - 1``), with one logged warning saying how many.
    """
    if vocab_size <= FIRST_RANDOM_TOKEN:
        raise ValueError(f"vocab_size={vocab_size} leaves no token ids >= {FIRST_RANDOM_TOKEN} for random prompts")
    prompts, outputs, trimmed_prompts, trimmed_outputs = [], [], 0, 0
    for p, o in zip(prompt_lens, output_lens, strict=True):
        p, o = max(1, int(p)), max(1, int(o))
        if o > max_model_len - 1:
            o, trimmed_outputs = max_model_len - 1, trimmed_outputs + 1
        if p + o > max_model_len:
            p, trimmed_prompts = max_model_len - o, trimmed_prompts + 1
        prompts.append(p)
        outputs.append(o)
    if trimmed_prompts or trimmed_outputs:
        log.warning("%s workload: trimmed %d of %d prompts and %d outputs so prompt + output fits "
                    "model.max_model_len=%d", prefix, trimmed_prompts, len(prompts), trimmed_outputs, max_model_len)
    tokens = rng(seed, TOKENS).integers(FIRST_RANDOM_TOKEN, vocab_size, size=sum(prompts)).tolist()
    requests, start = [], 0
    for i, (p, o, t) in enumerate(zip(prompts, outputs, arrivals, strict=True)):
        params = SamplingParams(max_tokens=o, ignore_eos=True)
        requests.append(Request(f"{prefix}-{i}", tuple(tokens[start:start + p]), params, arrival_s=float(t)))
        start += p
    return requests
