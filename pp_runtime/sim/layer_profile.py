"""Per-layer profile (source b): measured parts of a model, scaled to any layer split.

``scripts/profile_layers.py`` times, on one device and with random weights of the target shape, four stages
built by the runtime's own stage code: an empty stage (``fixed``: input preparation, attention metadata, the
call itself), one decoder layer, the embeddings alone and the final norm + LM head alone, each on the
micro-batch shapes of ``cost_model.profile_points``. The part's time is the stage's time minus the empty
stage's; each part is fitted with the same four-term form as ``CostModel`` (fixed, per token, per prefill
(token, context) pair, per decode context token), except the head, whose "per token" term counts the sampled
tokens (only those reach the LM head). A split then costs ``fixed + n * layer (+ embed) (+ head)`` per stage.

Assumptions: the decoder layers of a model are identical (true of the supported architectures), so one layer's
time scales linearly with the layer count; the device, dtype and attention backend of the profile are those of
the target; one layer's time does not depend on which stage it runs on (no cache or memory-pressure effects).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pp_runtime.planner.cost_model import CostModel, CostModelError
from pp_runtime.sim.parts import PartTimes, piece_shape

PARTS = ("fixed", "layer", "embed", "head")


# What a profile records of the shape it timed, and what must match the model it prices.
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "vocab_size")


def shape_meta(hf_config) -> dict:
    """The shape fields of ``hf_config`` (GPT-2's names included) that a profile records."""
    names = {"hidden_size": ("hidden_size", "n_embd"), "intermediate_size": ("intermediate_size", "n_inner"),
             "num_attention_heads": ("num_attention_heads", "n_head")}
    meta = {}
    for key in SHAPE_KEYS:
        value = next((getattr(hf_config, n) for n in names.get(key, (key,)) if getattr(hf_config, n, None)), None)
        if value is not None:
            meta[key] = value
    return meta


class LayerProfileError(ValueError):
    """A layer-profile file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class LayerProfile:
    """Fitted coefficients ``(c0, c_tok, c_attn, c_dec)`` per part, plus where the profile was taken."""

    coefs: dict[str, tuple[float, float, float, float]]
    meta: dict = field(default_factory=dict)
    rows: dict[str, list[list[float]]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def fit(cls, rows: dict[str, list[list[float]]], meta: dict | None = None) -> LayerProfile:
        """Fit each part from rows ``[num_tokens, num_samples, attn_work, decode_ctx, seconds]``."""
        coefs = {}
        for part in PARTS:
            got = rows.get(part) or []
            # The head's cost follows the sampled tokens, every other part's the tokens.
            col = 1 if part == "head" else 0
            try:
                model = CostModel.fit([(0, r[col], r[2], r[3], r[4]) for r in got])
            except CostModelError as exc:
                raise LayerProfileError(f"layer profile part {part!r}: {exc}") from None
            coefs[part] = (model.c0[0], model.c_tok[0], model.c_attn[0], model.c_dec[0])
        return cls(coefs, dict(meta or {}), {k: [list(map(float, r)) for r in v] for k, v in rows.items()})

    def part_times(self, pieces: Iterable) -> PartTimes:
        """Seconds per part of a micro-batch made of ``pieces``."""
        tokens = samples = attn = dec = 0
        for piece in pieces:
            n, ctx, decode, sampled = piece_shape(piece)
            tokens += n
            samples += sampled
            if decode:
                dec += ctx
            else:
                attn += n * ctx

        def at(part: str, count: int) -> float:
            c0, c_tok, c_attn, c_dec = self.coefs[part]
            return c0 + c_tok * count + c_attn * attn + c_dec * dec

        return PartTimes(at("fixed", tokens), at("layer", tokens), at("embed", tokens), at("head", samples))

    def shape_mismatch(self, hf_config) -> str | None:
        """How the profiled shape differs from ``hf_config``'s (``"hidden_size 2048 vs 576, ..."``), or None. Only
        the fields the profile recorded are compared (older profiles hold model_type and hidden_size)."""
        want = shape_meta(hf_config)
        diffs = [f"{k} {self.meta[k]} vs {want[k]}" for k in SHAPE_KEYS
                 if k in self.meta and k in want and self.meta[k] != want[k]]
        return ", ".join(diffs) or None

    # ---- files -------------------------------------------------------------------------------------------
    def to_json(self, path: str | Path) -> None:
        data = {"meta": self.meta, "coefs": {k: list(v) for k, v in self.coefs.items()}, "rows": self.rows}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> LayerProfile:
        """Load a profile written by ``to_json`` (its coefficients; rows are kept for refitting)."""
        fix = "write one with `python -m scripts.profile_layers --out FILE`"
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise LayerProfileError(f"cannot read layer profile {str(path)!r} ({e.strerror}); {fix}") from None
        except json.JSONDecodeError as e:
            raise LayerProfileError(f"layer profile {str(path)!r} is not JSON ({e.msg}); {fix}") from None
        coefs = data.get("coefs") if isinstance(data, dict) else None
        if not isinstance(coefs, dict):
            raise LayerProfileError(f"layer profile {str(path)!r} has no 'coefs' object; {fix}")
        for part in PARTS:
            v = coefs.get(part)
            if not (isinstance(v, list) and len(v) == 4 and all(isinstance(x, (int, float)) and x >= 0 for x in v)):
                raise LayerProfileError(f"layer profile {str(path)!r}: coefs.{part} must be 4 numbers >= 0 "
                                        f"(c0, c_tok, c_attn, c_dec), got {v!r}; {fix}")
        return cls({p: tuple(float(x) for x in coefs[p]) for p in PARTS}, data.get("meta") or {},
                   data.get("rows") or {})
