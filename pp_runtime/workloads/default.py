"""The built-in demo (``workload=default``): a handful of short questions, answered greedily.

Prompts go through the tokenizer's chat template when it has one (as a single user turn with the generation
prompt), else plain encoding. ``workload.num_requests`` does not apply: the demo is always these prompts.
"""

from __future__ import annotations

from collections.abc import Mapping

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, SamplingParams
from pp_runtime.workloads.arrivals import arrival_times

DEMO_PROMPTS = (
    "What is the capital of France?",
    "Explain pipeline parallelism in one sentence.",
    "Write a haiku about a busy GPU.",
    "Name three prime numbers greater than ten.",
    "Why does a KV cache speed up text generation?",
    "Give one tip for writing readable Python code.",
)


def load_default(cfg: WorkloadConfig, *, tokenizer=None) -> list[Request]:
    """One greedy request per demo prompt (``max_tokens = workload.max_tokens``), ids ``demo-0``, ``demo-1``, ..."""
    if tokenizer is None:
        raise ConfigError("workload=default needs the model's tokenizer to encode its text prompts; load one, or "
                          "use workload=jsonl with 'prompt_token_ids', or workload=trace / synthetic")
    params = SamplingParams(max_tokens=cfg.max_tokens)
    times = arrival_times(cfg, len(DEMO_PROMPTS))
    return [Request(f"demo-{i}", encode_prompt(tokenizer, text), params, arrival_s=t, prompt=text)
            for i, (text, t) in enumerate(zip(DEMO_PROMPTS, times))]


def encode_prompt(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of ``text`` as a user turn through the chat template, or plainly encoded if there is none."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        # transformers 5 returns a BatchEncoding (return_dict=True by default); older versions a list of ids.
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    return tuple(int(t) for t in ids)
