"""Predicted seconds of a micro-batch on each pipeline stage, fitted from timings of synthetic shapes.

Per stage ``s``: ``t_s = c0[s] + c_tok[s] * num_tokens + c_attn[s] * attn_work + c_dec[s] * decode_ctx
+ c_ctx[s] * prefill_ctx``, where ``attn_work`` is the sum over the micro-batch's prefill pieces of
``num_tokens * context_len``, ``decode_ctx`` the sum of its decode tokens' context lengths and ``prefill_ctx`` the
sum of its prefill pieces' context lengths: linear layers cost per token, prefill attention per (token, cached
token) pair, so a chunk deep into a long prompt costs more than a fresh one of the same size, and decode
attention per cached token read. The two attention terms are apart because they differ in kind: prefill
attention is compute-bound, decode attention reads the whole cached context for one query (memory-bound; on
a CPU several times dearer per pair). ``c_ctx`` is what a prefill chunk pays per cached token whatever its own
size: reading (on the CPU, with the sdpa backend, gathering and copying) the prefix's KV in every layer. Without
it a model fitted over fresh and deep chunks underpredicts a chunk deep into a long prompt (-11..-24% past a 4k
prefix on the CPU, docs/BENCHMARKS.md) and overpredicts mid prefixes on a GPU, and the time-balanced fill's
small late chunks run long.
Stage 0 carries the embeddings and the last stage the LM head, hence separate coefficients per stage.

A piece is a ``plan.Piece`` or a ``(num_tokens, context_len)`` pair. The runtime times each shape of
``profile_points`` on every stage and hands the rows to ``CostModel.fit``; this module only does the maths.
A file or cached model of the four-term form (no ``c_ctx``) still loads, with ``c_ctx`` = 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

_KEYS = ("c0", "c_tok", "c_attn", "c_dec", "c_ctx")
# Bumped when the form changes, so a cost-model cache entry of an older form is profiled again.
FORM_VERSION = 2
_FIX = "give a cost_model.json written by a run (CostModel.to_json)"


def prediction_error(model: CostModel, work_by_mb: dict[int, tuple[int, int, int, int]], events: dict) -> dict:
    """How far ``model`` was from the measured compute time of each (micro-batch, stage): the median and p90 of
    ``|predicted - measured| / measured``.

    ``work_by_mb``: micro-batch id -> ``work(pieces)`` (``Planner.mb_work``); ``events``: stage -> the tracer's
    ``[n, 6]`` rows (kind, start_ns, end_ns, mb_id, ...), whose COMPUTE rows are the measurements.
    """
    from pp_runtime.trace.tracer import EventKind

    errors = []
    for stage, rows in events.items():
        rows = np.asarray(rows).reshape(-1, 6)
        measured_by_mb: dict[int, float] = {}  # a stage's compute events of one micro-batch, summed (split head)
        for _, start, end, mb, _, _ in rows[rows[:, 0] == EventKind.COMPUTE].tolist():
            measured_by_mb[int(mb)] = measured_by_mb.get(int(mb), 0.0) + (end - start) / 1e9
        for mb, measured in measured_by_mb.items():
            w = work_by_mb.get(mb)
            if w is not None and measured > 0 and int(stage) < model.num_stages:
                errors.append(abs(model.stage_times(*w)[int(stage)] - measured) / measured)
    if not errors:
        return {"median": None, "p90": None, "num_samples": 0}
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)), "num_samples": len(errors)}


class CostModelError(ValueError):
    """A cost-model file or sample set is unusable; the message names the file, key or stage to fix."""


def work(pieces: Iterable) -> tuple[int, int, int, int]:
    """``(num_tokens, attn_work, decode_ctx, prefill_ctx)`` of a micro-batch: its tokens, the sum of
    num_tokens * context_len over prefill pieces, the sum of context_len over decode pieces (a ``(1, ctx)`` tuple
    is a decode) and the sum of context_len over prefill pieces."""
    tokens = attn = dec = pre = 0
    for p in pieces:
        if isinstance(p, tuple):
            (n, ctx), decode = p, p[0] == 1
        else:
            n, ctx, decode = p.num_tokens, p.context_len, not p.is_prefill
        tokens += n
        if decode:
            dec += ctx
        else:
            attn += n * ctx
            pre += ctx
    return tokens, attn, dec, pre


@dataclass(frozen=True)
class CostModel:
    """Per-stage coefficients in seconds: fixed, per token, per prefill (token x context) pair, per decode
    context token, per prefill context token (``c_ctx``: optional, zeros when left out)."""

    c0: tuple[float, ...]
    c_tok: tuple[float, ...]
    c_attn: tuple[float, ...]
    c_dec: tuple[float, ...]
    c_ctx: tuple[float, ...] = ()

    def __post_init__(self):
        if not len(self.c_ctx):  # the four-term form
            object.__setattr__(self, "c_ctx", (0.0,) * len(self.c0))
        for key in _KEYS:
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        if not len(self.c0) == len(self.c_tok) == len(self.c_attn) == len(self.c_dec) == len(self.c_ctx) >= 1:
            raise CostModelError(f"cost model needs one c0, c_tok, c_attn and c_dec per stage (and one c_ctx, if "
                                 f"given), got {len(self.c0)}, {len(self.c_tok)}, {len(self.c_attn)} and "
                                 f"{len(self.c_dec)} (c_ctx: {len(self.c_ctx)})")
        for key in _KEYS:
            bad = [v for v in getattr(self, key) if not (math.isfinite(v) and v >= 0)]
            if bad:
                raise CostModelError(f"cost model {key}={list(getattr(self, key))} has {bad[0]}; "
                                     f"every coefficient must be a finite number >= 0")

    @property
    def num_stages(self) -> int:
        return len(self.c0)

    # ---- prediction --------------------------------------------------------------------------------------
    def stage_times(self, num_tokens: int, attn_work: float, decode_ctx: float = 0,
                    prefill_ctx: float = 0) -> list[float]:
        """Seconds on each stage for a micro-batch of ``num_tokens`` tokens, ``attn_work`` prefill pairs,
        ``decode_ctx`` cached tokens read by its decodes and ``prefill_ctx`` context tokens of its prefill pieces
        (the arguments are ``work(pieces)``)."""
        return [a + b * num_tokens + c * attn_work + d * decode_ctx + e * prefill_ctx
                for a, b, c, d, e in zip(self.c0, self.c_tok, self.c_attn, self.c_dec, self.c_ctx)]

    def predict(self, pieces: Iterable) -> list[float]:
        """Seconds on each stage for a micro-batch made of ``pieces``."""
        return self.stage_times(*work(pieces))

    def predict_max(self, pieces: Iterable) -> float:
        """Seconds on the bottleneck stage: what the micro-batch costs the pipeline."""
        return max(self.predict(pieces))

    def max_chunk(self, num_tokens: int, attn_work: float, *, prefix: int, limit_s: float, cap: int,
                  decode_ctx: float = 0, prefill_ctx: float = 0) -> int:
        """Most tokens (at most ``cap``) a chunk starting at position ``prefix`` can add to a micro-batch of
        ``num_tokens`` tokens, ``attn_work`` pairs, ``decode_ctx`` decode reads and ``prefill_ctx`` prefill
        context tokens while every stage stays within ``limit_s`` seconds.

        A chunk of n tokens adds ``c_tok * n + c_attn * n * (prefix + n) + c_ctx * (prefix + n)`` per stage:
        solved in closed form.
        """
        best = cap
        for t, b, a, e in zip(self.stage_times(num_tokens, attn_work, decode_ctx, prefill_ctx), self.c_tok,
                              self.c_attn, self.c_ctx):
            room = limit_s - t - e * prefix  # the prefix's KV is read whatever the chunk's size
            if room <= 0:  # also room == 0 with c_tok == 0 at prefix 0, where the root below would be 0 / 0
                return 0
            lin = b + a * prefix + e
            if a > 0 or lin > 0:
                # Positive root of a n^2 + lin n - room, in the form that does not cancel when a is tiny.
                n = 2 * room / (lin + math.sqrt(lin * lin + 4 * a * room))
                best = min(best, int(n) if n < cap else cap)
        while best > 0 and not self._fits(num_tokens, attn_work, decode_ctx, prefill_ctx, prefix, best, limit_s):
            best -= 1  # float rounding at the boundary
        return max(best, 0)

    def _fits(self, num_tokens: int, attn_work: float, decode_ctx: float, prefill_ctx: float, prefix: int, n: int,
              limit_s: float) -> bool:
        times = self.stage_times(num_tokens + n, attn_work + n * (prefix + n), decode_ctx, prefill_ctx + prefix + n)
        return max(times) <= limit_s

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def default(cls, num_stages: int) -> CostModel:
        """Rough CPU numbers for a ~135M-parameter model (one float32 core per stage), split over the stages.

        Whole model (measured for SmolLM2-135M on this project's 2-core CPU): ~90 ms fixed (weights streamed
        from memory, Python), ~4 ms per token in the linear layers, ~1.5 us per prefill (token, context) pair and
        ~90 us per cached token a decode reads. Stage 0 adds the embedding gather, the last stage the LM head.
        """
        if num_stages < 1:
            raise CostModelError(f"num_stages={num_stages} must be >= 1")
        c0 = [9e-2 / num_stages] * num_stages
        c_tok = [4e-3 / num_stages] * num_stages
        c_tok[0] += 2e-5
        c0[-1] += 2e-3
        c_tok[-1] += 2e-4
        return cls(tuple(c0), tuple(c_tok), (1.5e-6 / num_stages,) * num_stages, (9e-5 / num_stages,) * num_stages)

    @classmethod
    def fit(cls, samples: Iterable[tuple]) -> CostModel:
        """Least-squares fit, minimising relative error, from measured rows ``(stage, *work(shape), seconds)``:
        ``(stage, num_tokens, attn_work, decode_ctx, prefill_ctx, seconds)``. Rows without ``prefill_ctx``
        (``(stage, num_tokens, attn_work, decode_ctx, seconds)``) fit the four-term form (``c_ctx`` = 0).

        Stages are 0 .. max stage seen, each needing at least 4 rows. Coefficients are kept >= 0: one that
        would come out negative is fixed at 0 and the others are refitted without it.
        """
        rows: dict[int, list[tuple[float, float, float, float, float]]] = {}
        for stage, n, attn, dec, *pre, secs in samples:
            rows.setdefault(int(stage), []).append((float(n), float(attn), float(dec), float(sum(pre)), float(secs)))
        if not rows:
            raise CostModelError("no timing samples to fit; time the shapes of profile_points on every stage")
        coefs = []
        for stage in range(max(rows) + 1):
            got = rows.get(stage, [])
            if len(got) < 4:
                raise CostModelError(f"stage {stage} has {len(got)} timing samples; fitting needs at least 4 "
                                     f"per stage (time every shape of profile_points on every stage)")
            coefs.append(_nonneg_lstsq(np.array(got)))
        return cls(*(tuple(c[i] for c in coefs) for i in range(len(_KEYS))))

    # ---- files -------------------------------------------------------------------------------------------
    def to_json(self, path: str | Path, *, layout: dict | None = None) -> None:
        """Write the coefficients, and ``layout`` (``stage_layout``: what each stage computed when they were
        timed) if given, which ``recorded_layout`` reads back."""
        data = {k: list(v) for k, v in asdict(self).items()}
        if layout is not None:
            data["layout"] = layout
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> CostModel:
        """Load coefficients written by ``to_json``; a malformed file raises naming the file and the key."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise CostModelError(f"cannot read cost model file {str(path)!r} ({e.strerror}); {_FIX}") from None
        except json.JSONDecodeError as e:
            raise CostModelError(f"cost model file {str(path)!r} is not JSON ({e.msg}, line {e.lineno}); "
                                 f"{_FIX}") from None
        if not isinstance(data, dict):
            raise CostModelError(f"cost model file {str(path)!r} must hold an object with keys {list(_KEYS)}")
        values = {}
        for key in _KEYS:
            v = data.get(key)
            if key == "c_ctx" and v is None:
                continue  # a file of the four-term form
            if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v)):
                raise CostModelError(f"cost model file {str(path)!r}: key {key!r} must be a non-empty list of "
                                     f"numbers, one per stage, got {v!r}; {_FIX}")
            values[key] = v
        try:
            return cls(**values)
        except CostModelError as e:
            raise CostModelError(f"cost model file {str(path)!r}: {e}") from None


def stage_layout(layers_per_stage: list[int], lm_head_split: int | None) -> dict:
    """What each stage computes, as a cost model file records it: decoder layers per stage, and the vocabulary
    split point of a vocabulary-parallel LM head (None: the last stage holds the whole head)."""
    return {"layers_per_stage": list(layers_per_stage), "lm_head_split": lm_head_split}


def recorded_layout(path: str | Path) -> dict | None:
    """The ``stage_layout`` a cost model file was timed on; None for a file written without one (older runs, or
    written by hand). The file must be readable JSON (``CostModel.from_json`` checks it first)."""
    data = json.loads(Path(path).read_text())
    layout = data.get("layout") if isinstance(data, dict) else None
    return layout if isinstance(layout, dict) else None


def check_layout(path: str | Path, *, key: str, layers_per_stage: list[int], lm_head_split: int | None,
                 other: str = "profile this layout (scheduler.cost_model_path=null)") -> None:
    """Raise ConfigError naming ``key`` if the cost model file ``path`` was timed on another ``stage_layout`` than
    the given one (a file without a recorded layout passes). ``other`` is the alternative to suggest besides
    setting the layout the file was timed on."""
    from pp_runtime.config import ConfigError

    recorded = recorded_layout(path)
    mine = stage_layout(layers_per_stage, lm_head_split)
    if recorded is None or recorded == mine:
        return

    def says(layout: dict) -> str:
        split = layout.get("lm_head_split")
        head = "the LM head whole on the last stage" if split is None else f"the LM head split at token {split}"
        return f"{layout.get('layers_per_stage')} layers per stage and {head}"

    raise ConfigError(f"{key}={str(path)!r} was timed on {says(recorded)}, but this job has {says(mine)}: its "
                      f"stage times do not fit this job; {other}, or set pipeline.layers_per_stage="
                      f"{recorded.get('layers_per_stage')} and pipeline.split_lm_head="
                      f"{str(recorded.get('lm_head_split') is not None).lower()} as when it was timed")


def _nonneg_lstsq(rows: np.ndarray) -> list[float]:
    """Least squares of seconds on [1, num_tokens, attn_work, decode_ctx, prefill_ctx], coefficients clamped at 0
    (active set), minimising relative error so that small micro-batches are fitted as well as large ones."""
    x = np.column_stack([np.ones(len(rows)), rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]])  # [num_rows, 5]
    y = rows[:, 4]
    weight = 1.0 / np.maximum(y, 1e-9)
    x, y = x * weight[:, None], y * weight
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale  # columns of similar magnitude: attn_work is ~1e6 times num_tokens
    active = [0, 1, 2, 3, 4]
    coef = np.zeros(5)
    while active:
        sol, *_ = np.linalg.lstsq(xs[:, active], y, rcond=None)
        if sol.min() >= 0:
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return [float(c) for c in coef / scale]


def profile_points(max_tokens: int, *, max_context_len: int = 4096) -> list[list[tuple[int, int]]]:
    """Synthetic micro-batch shapes to time on every stage, as lists of ``(num_tokens, context_len)`` pieces.

    Covers fresh prefills of several sizes up to ``max_tokens`` (the token budget), chunks deep into a long
    prompt (prefix up to ``max_context_len``), and pure decode batches over short and long contexts: enough
    spread in tokens and attention work for ``CostModel.fit`` to separate the three coefficients.
    """
    if max_tokens < 1 or max_context_len < 1:
        raise CostModelError(f"profile_points needs max_tokens >= 1 and max_context_len >= 1, got "
                             f"{max_tokens} and {max_context_len}")
    cap = max_context_len
    m = min(max_tokens, cap)  # a piece never holds more tokens than its context
    sizes = sorted({max(1, m // 8), max(1, m // 4), max(1, m // 2), m})
    shapes = [[(n, n)] for n in sizes]  # fresh prefill: attention over the chunk itself
    for n in sorted({max(1, m // 4), m}):
        for prefix in (m, 3 * m, cap):  # later chunks of a long prompt
            shapes.append([(n, min(cap, n + prefix))])
    for d in sorted({1, min(m, 16), min(m, 64)}):
        for ctx in sorted({min(cap, 128), min(cap, 1024)}):
            shapes.append([(1, ctx)] * d)  # decodes
    unique = []
    for s in shapes:
        if s not in unique:
            unique.append(s)
    return unique
