"""Job metrics in the vocabulary of vLLM's ``benchmark_serving``, and the per-request ``outputs.jsonl`` record.

Times on a ``Sequence`` are seconds since job start; latency metrics are reported in milliseconds.
Definitions (``arrival`` is ``Request.arrival_s``):

- completed: finished with a finish reason other than ``"rejected"`` and no error. Token totals, throughputs
  and latencies count completed requests only, as vLLM counts only successful ones.
- ttft: ``first_token_s - arrival``; e2el: ``finish_s - arrival``;
- tpot: ``(finish_s - first_token_s) / (outputs - 1)``, for requests with more than one output token;
- itl: every gap between consecutive entries of ``token_times_s`` (one entry per output token), all requests.

Statistics of an empty set (e.g. no request produced two tokens) are ``None``, not 0, so that "not
measured" is not mistaken for "instant"; throughputs over ``wall_s <= 0`` are 0.0.

- slowdown (when an ``alone`` estimate is given, e.g. the planner's cost model): per completed request, TTFT and
  e2el divided by what the request would take alone on the pipeline; their mean / median / p90 / max, and Jain's
  fairness index ``(sum x)^2 / (n sum x^2)`` over them (1: every request slowed down alike; 1/n: one request
  bears it all). ``request_slowdown`` is the one formula: ``slowdown_metrics`` aggregates it and ``request_record``
  stores it on each completed request's ``outputs.jsonl`` line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pp_runtime.sequence import Sequence

_MS = 1000.0


def compute_metrics(seqs: list[Sequence], *, wall_s: float,
                    alone: Callable[[Sequence], tuple[float, float]] | None = None) -> dict:
    """Counts, throughputs and mean / median / p90 / p99 of ttft, tpot, itl and e2el (ms) over ``seqs``; with
    ``alone(seq) -> (ttft_s, e2e_s)``, also ``slowdown`` (see the module docstring)."""
    done = [s for s in seqs if _completed(s)]
    input_tokens = sum(s.prompt_len for s in done)
    output_tokens = sum(len(s.output_token_ids) for s in done)
    per_s = (1.0 / wall_s) if wall_s > 0 else 0.0
    out: dict = {
        "num_requests": len(seqs),
        "completed": len(done),
        "rejected": sum(s.finish_reason == "rejected" for s in seqs),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "duration_s": wall_s,
        "request_throughput": len(done) * per_s,
        "output_throughput": output_tokens * per_s,
        "total_token_throughput": (input_tokens + output_tokens) * per_s,
    }
    ttft = [s.first_token_s - s.request.arrival_s for s in done if s.first_token_s is not None]
    tpot = [(s.finish_s - s.first_token_s) / (len(s.output_token_ids) - 1)
            for s in done if len(s.output_token_ids) > 1 and s.first_token_s is not None and s.finish_s is not None]
    itl = [gap for s in done for gap in np.diff(s.token_times_s).tolist()]
    e2el = [s.finish_s - s.request.arrival_s for s in done if s.finish_s is not None]
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        out.update(_stats(name, values))
    if alone is not None:
        out["slowdown"] = slowdown_metrics(done, alone)
    return out


def slowdown_metrics(seqs: list[Sequence], alone: Callable[[Sequence], tuple[float, float]]) -> dict:
    """Per-request slowdown (``request_slowdown``) of TTFT and e2el over finished ``seqs``: stats and Jain's index."""
    rows = [r for r in (request_slowdown(s, alone) for s in seqs) if r is not None]
    out: dict = {"num_requests": len(rows)}
    for i, name in enumerate(("ttft", "e2e")):
        x = np.asarray([r[i] for r in rows], dtype=float)
        if not len(x):
            out.update({f"{k}_{name}": None for k in ("mean", "median", "p90", "max", "jain")})
            continue
        out.update({f"mean_{name}": float(x.mean()), f"median_{name}": float(np.median(x)),
                    f"p90_{name}": float(np.percentile(x, 90)), f"max_{name}": float(x.max()),
                    f"jain_{name}": float(x.sum() ** 2 / (len(x) * (x * x).sum()))})
    return out


def request_slowdown(seq: Sequence, alone: Callable[[Sequence], tuple[float, float]]) -> tuple[float, float] | None:
    """``seq``'s (TTFT, e2el) slowdown: measured / ``alone(seq)`` (both in seconds, so unitless; 1.0 = as fast as
    alone). None when it has no first token or no finish time yet, or an alone time is not positive."""
    if seq.first_token_s is None or seq.finish_s is None:
        return None
    a_ttft, a_e2e = alone(seq)
    if a_ttft <= 0 or a_e2e <= 0:
        return None
    arrival = seq.request.arrival_s
    return (seq.first_token_s - arrival) / a_ttft, (seq.finish_s - arrival) / a_e2e


def request_record(seq: Sequence, text: str | None, *,
                   alone: Callable[[Sequence], tuple[float, float]] | None = None) -> dict:
    """One ``outputs.jsonl`` line; ``text`` only when given, ``error`` only when the sequence has one.

    With ``alone`` (the estimate ``compute_metrics`` gets), also ``slowdown``: ``{"ttft": x, "e2e": y}``
    (``request_slowdown``) for a completed request, null for a rejected or failed one (no slowdown is measured).
    """
    arrival = seq.request.arrival_s
    record: dict = {
        "id": seq.request.id,
        "prompt_tokens": seq.prompt_len,
        "output_token_ids": list(seq.output_token_ids),
    }
    if text is not None:
        record["text"] = text
    record.update({
        "finish_reason": seq.finish_reason,
        "ttft_s": None if seq.first_token_s is None else seq.first_token_s - arrival,
        "e2e_s": None if seq.finish_s is None else seq.finish_s - arrival,
    })
    if alone is not None:
        slowdown = request_slowdown(seq, alone) if _completed(seq) else None
        record["slowdown"] = None if slowdown is None else {"ttft": slowdown[0], "e2e": slowdown[1]}
    record["num_preemptions"] = seq.num_preemptions
    if seq.error is not None:
        record["error"] = seq.error
    return record


def _completed(seq: Sequence) -> bool:
    return seq.finish_reason is not None and seq.finish_reason != "rejected" and seq.error is None


def _stats(name: str, values_s: list[float]) -> dict:
    if not values_s:
        return {f"{k}_{name}_ms": None for k in ("mean", "median", "p90", "p99")}
    ms = np.asarray(values_s, dtype=float) * _MS
    return {
        f"mean_{name}_ms": float(ms.mean()),
        f"median_{name}_ms": float(np.median(ms)),
        f"p90_{name}_ms": float(np.percentile(ms, 90)),
        f"p99_{name}_ms": float(np.percentile(ms, 99)),
    }
