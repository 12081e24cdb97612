"""Split a model's decoder layers into contiguous per-stage ranges, balanced by cost.

Two rules: the head-share heuristic below (the default), and ``partition_by_time`` from a per-layer time model
(a layer profile or the roofline, ``pp_runtime.sim``), which ``choose_split`` uses only where it predicts a
lower bottleneck.

A stage plan is data: one ``range`` of global layer indices per stage. Stage 0 also owns the embeddings and
the last stage the final norm and LM head, whose cost is weighed in as "layer equivalents". The embedding is a
table lookup (no matmul) and weighs nothing; the LM head is a vocab x hidden matmul on the sampled tokens. With a
vocabulary-parallel head (``pipeline.split_lm_head``, ``resolve_head_split``) stage 0 carries its share of it.

The job prices the LM head over the micro-batches its planner actually makes of the workload (``planned_rows``,
``head_cost_of_mix``): per micro-batch a layer costs a fixed part plus its tokens, the head a fixed part plus its
sampled rows (a prefill chunk samples one row per sequence that finishes its prompt, a decode one per
sequence). The fixed part (``CPU_FIXED_ROWS``: reading the weights once per micro-batch, the per-call overhead)
is what a share of sampled tokens misses: SARATHI's micro-batches sample a few rows each, and the head's
vocab x hidden weight is as large as several layers (SmolLM2-135M: 8).
"""

from __future__ import annotations

from pp_runtime.config import ConfigError
from pp_runtime.sim.hardware import ModelShape

# Share of a micro-batch's tokens that reach the LM head (decode tokens and last prefill chunks) when the
# workload is not known: a middle ground between prefill-heavy (few) and decode-heavy (all) mixes.
HEAD_TOKEN_FRACTION = 0.25
# A matmul's fixed cost per micro-batch, in rows of it, on the CPU (float32, one thread per rank): fitted to the
# stage compute times of 2-stage runs on the 2-core VM (SmolLM2-135M and a random Llama 384 x 8, SARATHI and
# Orca; docs/BENCHMARKS.md, issue 14). Not measured on a GPU, which keeps the plain share (0).
CPU_FIXED_ROWS = 8
# Requests of the workload the planner is driven over to find its micro-batches (the mix is what matters).
MIX_REQUESTS = 256
_HEAD_SPLIT_ALIGN = 64  # a split LM head's split point is a multiple of this (GEMM-friendly widths) where possible


def head_split_point(vocab_size: int) -> int:
    """``v0`` of a vocabulary-parallel LM head (``stages/vocab_parallel.py``): stage 0 computes tokens ``[0, v0)``,
    the last stage ``[v0, vocab_size)``; half, rounded down to a multiple of 64 where the vocabulary holds at least
    two such blocks. Raises ValueError below 2 tokens."""
    if vocab_size < 2:
        raise ValueError(f"a vocabulary of {vocab_size} token(s) cannot be split")
    half = vocab_size // 2
    return half - half % _HEAD_SPLIT_ALIGN if vocab_size >= 2 * _HEAD_SPLIT_ALIGN else half


def splits_head(setting, *, num_stages: int, cpu: bool) -> bool:
    """Whether ``pipeline.split_lm_head`` (``setting``: "auto", True or False) splits the head: never with one stage;
    ``auto`` on the CPU only (the split has not run on a GPU yet)."""
    return num_stages >= 2 and (setting is True or (setting == "auto" and cpu))


def resolve_head_split(setting, *, vocab_size: int, num_stages: int, cpu: bool) -> int | None:
    """``v0`` when ``splits_head``, else None."""
    return head_split_point(vocab_size) if splits_head(setting, num_stages=num_stages, cpu=cpu) else None


def layer_params(hf_config) -> int:
    """Weights in one decoder layer (attention projections + MLP), the unit of cost."""
    return ModelShape.from_hf(hf_config).layer_params


def head_cost_layers(hf_config, sampled_share: float = HEAD_TOKEN_FRACTION) -> float:
    """LM head cost in layer equivalents: the vocab x hidden matmul on the share of tokens that are sampled."""
    return hf_config.vocab_size * hf_config.hidden_size * sampled_share / layer_params(hf_config)


def sampled_share(requests) -> float:
    """Share of a workload's tokens that reach the LM head: output tokens over prompt + output tokens.

    Measured on SmolLM2 over 2 CPU stages, the split this gives was the fastest of those tried for a
    decode-heavy mix (18/12: +33% tokens/s over 16/14) and for a real trace (16/14), see docs/BENCHMARKS.md.
    """
    out = sum(r.params.max_tokens for r in requests)
    total = out + sum(len(r.prompt_token_ids) for r in requests)
    return out / total if total else HEAD_TOKEN_FRACTION


def planned_rows(sched, requests, *, num_slots: int, max_model_len: int, block_size: int) -> list[tuple[int, int]]:
    """``(tokens, sampled rows)`` of each micro-batch the planner of ``sched`` (a SchedulerConfig) makes of the
    first ``MIX_REQUESTS`` requests, driven in virtual time (no stages, a KV cache that holds them all, the token
    budget without time balancing or an SLO: no cost model exists before the split); empty when the planner
    cannot serve them."""
    import dataclasses

    from pp_runtime.planner import make_planner, needs_cost_model
    from pp_runtime.planner.budget import budget_bound, is_auto
    from pp_runtime.planner.loop import PlannerStuck, drive

    if needs_cost_model(sched):  # no cost model exists before the split: the token budget alone shapes the mix
        sched = dataclasses.replace(sched, time_balanced=False, tbt_slo_ms=None)
    if is_auto(sched):
        sched = dataclasses.replace(sched, token_budget=budget_bound(sched))
    requests = requests[:MIX_REQUESTS]
    blocks = sum(-(-(len(r.prompt_token_ids) + r.params.max_tokens) // block_size) + 1 for r in requests)
    planner = make_planner(sched, num_blocks=max(blocks, 1), block_size=block_size, num_slots=num_slots,
                           max_model_len=max_model_len)
    for req in requests:
        planner.add_request(req)
    rows: list[tuple[int, int]] = []
    try:
        drive(planner, lambda piece: -1, on_schedule=lambda mb: rows.append((mb.num_tokens, mb.num_samples)))
    except PlannerStuck:
        return []
    return rows


def head_cost_of_mix(hf_config, rows: list[tuple[int, int]], *, fixed_rows: float) -> float:
    """LM head cost in layer equivalents over a mix of micro-batches (``planned_rows``): the head's
    ``vocab x hidden`` weight times the sampled rows plus ``fixed_rows`` per micro-batch, over one layer's weights
    times the tokens plus ``fixed_rows``. ``fixed_rows=0`` is ``head_cost_layers`` with the mix's sampled share.
    Raises ValueError on an empty mix."""
    if not rows:
        raise ValueError("head_cost_of_mix needs at least one micro-batch")
    head = sum(s + fixed_rows for _, s in rows) * hf_config.vocab_size * hf_config.hidden_size
    return head / (sum(t + fixed_rows for t, _ in rows) * layer_params(hf_config))


def check_layout(num_layers: int, num_stages: int, layers_per_stage: list[int] | None = None) -> None:
    """Raise ConfigError if the stages cannot hold the model's layers as asked."""
    if num_stages > num_layers:
        raise ConfigError(f"pipeline.stages={num_stages} is more than the model's {num_layers} decoder layers; "
                          f"lower pipeline.stages (and --nproc_per_node) to at most {num_layers}")
    if layers_per_stage is not None:
        if len(layers_per_stage) != num_stages or sum(layers_per_stage) != num_layers or min(layers_per_stage) < 1:
            raise ConfigError(f"pipeline.layers_per_stage={list(layers_per_stage)} must have {num_stages} entries "
                              f"of at least 1 that add up to the model's {num_layers} layers")


def partition_layers(num_layers: int, num_stages: int, *, head_cost: float = 0.0,
                     layers_per_stage: list[int] | None = None, first_head_share: float = 0.0) -> list[range]:
    """Contiguous layer ranges, one per stage, minimising the most expensive stage.

    ``head_cost`` is the LM head's cost in layer equivalents: on the last stage, but for ``first_head_share`` of
    it on stage 0 (a vocabulary-parallel head: ``v0 / vocab``). ``layers_per_stage`` overrides.
    """
    check_layout(num_layers, num_stages, layers_per_stage)
    if layers_per_stage is not None:
        counts = list(layers_per_stage)
    else:
        counts = _balanced_counts(num_layers, num_stages, head_cost * (1 - first_head_share),
                                  first_cost=head_cost * first_head_share)
    return _ranges(counts)


def partition_by_time(num_layers: int, num_stages: int, parts) -> list[range]:
    """Contiguous layer ranges minimising the bottleneck stage's predicted time.

    ``parts`` (a ``pp_runtime.sim.parts.PartTimes``) prices the workload's micro-batch mix per part, summed
    over the mix: one decoder layer, the embeddings (stage 0), the LM head (last stage), a fixed cost per stage.
    """
    check_layout(num_layers, num_stages)
    if parts.layer <= 0:
        return partition_layers(num_layers, num_stages)
    counts = _balanced_counts(num_layers, num_stages, parts.head / parts.layer, first_cost=parts.embed / parts.layer)
    return _ranges(counts)


def choose_split(num_layers: int, num_stages: int, *, head_cost: float, parts=None) -> tuple[list[range], str]:
    """The layer split a job should use, and which rule chose it: ``"time"`` or ``"heuristic"``.

    The head-share heuristic (``partition_layers`` with ``head_cost`` layer equivalents) is the default. With a
    per-layer time model (``parts``, a ``PartTimes`` of the workload's mix) the split of ``partition_by_time``
    wins only where that model predicts a strictly lower bottleneck than the heuristic's split.
    """
    heuristic = partition_layers(num_layers, num_stages, head_cost=head_cost)
    if parts is None:
        return heuristic, "heuristic"
    timed = partition_by_time(num_layers, num_stages, parts)

    def bottleneck(ranges: list[range]) -> float:
        return max(parts.stage_times([len(r) for r in ranges]))

    if bottleneck(timed) < bottleneck(heuristic) * (1 - 1e-9):
        return timed, "time"
    return heuristic, "heuristic"


def _ranges(counts: list[int]) -> list[range]:
    ranges, start = [], 0
    for n in counts:
        ranges.append(range(start, start + n))
        start += n
    return ranges


def _balanced_counts(num_layers: int, num_stages: int, head_cost: float, *, first_cost: float = 0.0) -> list[int]:
    # best[s][i]: the lowest bottleneck for layers [0, i) over stages [0, s); choice[s][i]: where stage s-1 starts.
    inf = float("inf")
    best = [[inf] * (num_layers + 1) for _ in range(num_stages + 1)]
    choice = [[0] * (num_layers + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for s in range(1, num_stages + 1):
        extra = (head_cost if s == num_stages else 0.0) + (first_cost if s == 1 else 0.0)
        for i in range(s, num_layers + 1):
            for j in range(i - 1, s - 2, -1):
                # Largest j first with a strict '<': ties give earlier stages more layers (the last has the head).
                cost = max(best[s - 1][j], (i - j) + extra)
                if cost < best[s][i] - 1e-9:
                    best[s][i], choice[s][i] = cost, j
    counts, i = [], num_layers
    for s in range(num_stages, 0, -1):
        j = choice[s][i]
        counts.append(i - j)
        i = j
    return counts[::-1]
