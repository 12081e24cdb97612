"""The built-in demo (``workload=default``): a handful of short questions, answered greedily.

Each prompt is a chat of one user turn, through the tokenizer's chat template with the generation prompt (as
``{"messages": [...]}`` lines of a request file are), else plainly encoded for a model without a template.
``workload.num_requests`` does not apply: the demo is always these prompts.
"""

from __future__ import annotations

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, SamplingParams
from pp_runtime.workloads.arrivals import arrival_times
from pp_runtime.workloads.jsonl import chat_token_ids

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
        return chat_token_ids(tokenizer, [{"role": "user", "content": text}])
    return tuple(int(t) for t in tokenizer(text)["input_ids"])
