"""What a request would take alone on the pipeline, by the cost model: the yardstick of per-request slowdown.

Alone, a prompt goes in the chunks its planner would cut (``min(chunk_size, token_budget)`` tokens, fewer deep
into a long prompt under a time-balanced planner; whole, for policies that never chunk); under sarathi up to
``max_chunks_in_flight`` of them are in flight, each entering stage 0 once stage 0 is free, every stage serving
them in order; then each further output token is one decode that crosses every
stage. Links and planning are free. Slowdown = measured / alone, so 1.0 is "as if it had the pipeline to itself".
The times come from any time model with ``num_stages`` and ``predict(pieces)``: the planner's ``CostModel`` in a
real run, the simulated hardware's own time model in ``pp-sim``. The pieces are the run's own: only a prompt's
last chunk samples (a time model that prices the LM head charges it once, as the run does).
"""

from __future__ import annotations

from pp_runtime.config import SchedulerConfig
from pp_runtime.plan import Piece
from pp_runtime.planner.cost_model import CostModel, work
from pp_runtime.planner.fill import Fill, Limits


def alone_times(model: CostModel, cfg: SchedulerConfig, *, num_slots: int, prompt_len: int,
                num_outputs: int, limits: Limits | None = None) -> tuple[float, float]:
    """(TTFT, end-to-end latency) in seconds of a request of ``prompt_len`` prompt and ``num_outputs`` output tokens
    served alone under ``cfg``'s policy with ``num_slots`` micro-batches in flight, priced by ``model`` (a
    ``CostModel``, or a simulator time model: ``num_stages`` and ``predict(pieces)``). ``limits``: the planner's
    (``fill.Limits``), so that a time-balanced planner's chunks, shorter deep into a prompt, are the ones priced;
    None: chunks of ``min(chunk_size, token_budget)``."""
    chunked = cfg.policy in ("sarathi", "fcfs", "throttle")
    chunk = min(cfg.chunk_size, cfg.token_budget) if chunked else max(prompt_len, 1)
    depth = 1
    if cfg.policy in ("sarathi", "throttle"):
        depth = num_slots if cfg.max_chunks_in_flight is None else min(cfg.max_chunks_in_flight, num_slots)
    free = [0.0] * model.num_stages  # when each stage is done with its last chunk
    back: list[float] = []  # when each chunk left the last stage
    start = 0
    while start < prompt_len:
        n = min(chunk, prompt_len - start)
        if chunked and limits is not None:
            n = Fill(limits).chunk(prefix=start, want=n)  # as the planner cuts it in an otherwise empty micro-batch
        t = back[-depth] if len(back) >= depth else 0.0  # at most `depth` chunks in flight
        chunk_piece = Piece(0, start, (0,) * n, (), is_prefill=True, sample=start + n == prompt_len)
        for s, dt in enumerate(model.predict([chunk_piece])):
            t = max(t, free[s]) + dt
            free[s] = t
        back.append(t)
        start += n
    ttft = back[-1] if back else 0.0
    return ttft, ttft + _decodes_s(model, prompt_len, num_outputs)


def _decodes_s(model, prompt_len: int, num_outputs: int) -> float:
    """Seconds of the decodes after the first token, each one micro-batch crossing every stage."""
    def decode(i: int) -> Piece:  # the decode that samples output token i + 1
        return Piece(0, prompt_len + i - 1, (0,), (), is_prefill=False, sample=True)

    if num_outputs < 2:
        return 0.0
    if type(model) is CostModel:
        # Affine in the context a decode reads, which grows by one per decode: the decodes cost as many times the
        # decode at their mean context. A request's record is built at its finish on rank 0, between micro-batches:
        # O(1) here, not one prediction per output token (milliseconds for a long answer;
        # scripts/bench_request_slowdown.py).
        mean_ctx = (decode(1).context_len + decode(num_outputs - 1).context_len) / 2
        return (num_outputs - 1) * sum(model.stage_times(*work([(1, mean_ctx)])))
    return sum(sum(model.predict([decode(i)])) for i in range(1, num_outputs))
