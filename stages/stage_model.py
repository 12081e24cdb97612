"""One pipeline stage of a Hugging Face decoder-only model: the modules a stage owns, and nothing else.

The model classes are transformers' own. We build the full model on the ``meta`` device (no memory), keep
the modules this stage owns (embeddings on stage 0, a range of decoder layers, final norm and LM head on the
last stage), materialise only those and load their weights from safetensors. Attention goes through the
``pp_paged`` backend registered with transformers, so no pipeline logic lives in model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages import attention

CPU_HEAD_TRANSPOSED_ROWS = 8  # up to this many sampled rows the CPU head runs as weight @ h.T (see logits)


@dataclass(frozen=True)
class Arch:
    """Where an architecture keeps its parts (module paths in the ``*ForCausalLM`` model)."""

    embed: str
    layers: str
    norm: str
    head: str
    rotary: str | None = None  # rotary embedding module (None: learned positions)
    pos_embed: str | None = None  # learned position embedding (GPT-2)


_LLAMA_LIKE = Arch(embed="model.embed_tokens", layers="model.layers", norm="model.norm", head="lm_head",
                   rotary="model.rotary_emb")
ARCHS: dict[str, Arch] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": Arch(embed="transformer.wte", layers="transformer.h", norm="transformer.ln_f", head="lm_head",
                 pos_embed="transformer.wpe"),
}


def arch_of(hf_config) -> Arch:
    try:
        return ARCHS[hf_config.model_type]
    except KeyError:
        raise ValueError(f"model type {hf_config.model_type!r} is not supported; supported: {sorted(ARCHS)} "
                         f"(add its module paths to stages.stage_model.ARCHS)") from None


class StageModel(nn.Module):
    """One stage's modules for a packed micro-batch: ``body`` takes ``[T]`` token ids (stage 0) or ``[T, hidden]``
    activations to ``[T, hidden]``; ``logits`` (last stage) takes the sampled rows to ``[S, vocab]``.

    With a vocabulary-parallel head (``stages/vocab_parallel.py``) ``head`` holds only this stage's rows of the LM
    head, tokens ``vocab_start ..``: stage 0 then has a head too, and ``head_logits`` gives that slice's logits."""

    def __init__(self, hf_config, layers: list[nn.Module], layer_ids: list[int], *, embed=None, pos_embed=None,
                 rotary=None, norm=None, head=None, vocab_start: int = 0):
        super().__init__()
        self.config = hf_config
        self.layer_ids = layer_ids
        self.embed, self.pos_embed, self.rotary, self.norm, self.head = embed, pos_embed, rotary, norm, head
        self.vocab_start = vocab_start
        self.layers = nn.ModuleList(layers)

    @property
    def is_first(self) -> bool:
        return self.embed is not None

    @property
    def is_last(self) -> bool:
        return self.norm is not None

    @torch.inference_mode()
    def body(self, inputs: torch.Tensor, positions: torch.Tensor, attn: attention.AttentionContext) -> torch.Tensor:
        """Embeddings (stage 0) and this stage's decoder layers: ``[T, hidden]`` out (what CUDA graphs capture)."""
        if self.embed is not None:
            h = self.embed(inputs)  # [T, hidden]
            if self.pos_embed is not None:
                h = h + self.pos_embed(positions)
        else:
            h = inputs
        h = h.unsqueeze(0)  # [1, T, hidden]: the packed micro-batch is one "sequence" to the HF layers
        position_ids = positions.unsqueeze(0)
        pos_emb = self.rotary(h, position_ids=position_ids) if self.rotary is not None else None
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_ids=position_ids, position_embeddings=pos_emb, pp_attn=attn)
        return h[0]

    @torch.inference_mode()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head (last stage) on the sampled rows ``[S, hidden]``: ``[S, vocab]`` float32."""
        return self.head_logits(self.final_norm(h))

    @torch.inference_mode()
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (last stage): ``[S, hidden]`` to ``[S, hidden]``."""
        return self.norm(h)

    @torch.inference_mode()
    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """This stage's LM head rows on normed rows ``[S, hidden]``: ``[S, head rows]`` float32 (every token, or
        with a split head tokens ``vocab_start ..``).

        On the CPU a few rows go as ``weight @ h.T``: for an ``[S, hidden] x [hidden, vocab]`` product with small S
        the CPU BLAS packs the whole ``[vocab, hidden]`` weight first, so ``F.linear`` took 8-10 ms for 2-8 rows of
        a 49152 x 384 head on one core against 2.8-6.2 ms this way (``python -m scripts.bench_lm_head``).
        """
        if h.device.type == "cpu" and h.shape[0] <= CPU_HEAD_TRANSPOSED_ROWS:
            logits = torch.mm(self.head.weight, h.T).T  # [S, head rows]
            if self.head.bias is not None:
                logits = logits + self.head.bias
            return logits.float()
        return self.head(h).float()


def build_stage_model(model_dir: str, hf_config, layer_range: range, *, num_stages: int, stage: int,
                      device: torch.device, dtype: torch.dtype, head_split: int | None = None) -> StageModel:
    """Build and load the modules ``stage`` owns; the rest of the model never leaves the meta device.

    ``head_split`` (``v0``, with 2+ stages): stage 0 also owns the LM head's rows ``[0, v0)`` (a view of the
    embeddings when they are tied) and the last stage only rows ``[v0, vocab)``."""
    from transformers import AutoModelForCausalLM

    from stages.weights import load_owned_weights

    attention.register()
    arch = arch_of(hf_config)
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attention.NAME, dtype=dtype)
    first, last = stage == 0, stage == num_stages - 1
    split = head_split if num_stages > 1 else None
    tied = getattr(hf_config, "tie_word_embeddings", False)
    all_layers = full.get_submodule(arch.layers)
    owned: dict[str, nn.Module] = {f"{arch.layers}.{i}": all_layers[i] for i in layer_range}
    rows: dict[str, slice] = {}  # owned module -> the rows of its tensors this stage loads
    if first:
        owned[arch.embed] = full.get_submodule(arch.embed)
        if arch.pos_embed:
            owned[arch.pos_embed] = full.get_submodule(arch.pos_embed)
    if last:
        owned[arch.norm] = full.get_submodule(arch.norm)
        owned[arch.head] = full.get_submodule(arch.head)
        if split is not None:
            owned[arch.head] = _head_rows(owned[arch.head], hf_config.vocab_size - split)
            rows[arch.head] = slice(split, hf_config.vocab_size)
    for module in owned.values():
        module.to_empty(device=device)
    load_owned_weights(model_dir, owned, hf_config, device=device, dtype=dtype, embed_name=arch.embed, rows=rows)
    first_head = None
    if first and split is not None and not tied:
        first_head = _head_rows(full.get_submodule(arch.head), split).to_empty(device=device)
        load_owned_weights(model_dir, {arch.head: first_head}, hf_config, device=device, dtype=dtype,
                           embed_name=arch.embed, rows={arch.head: slice(0, split)})
    if first and last and tied:
        owned[arch.head].weight = owned[arch.embed].weight  # one copy, as in the HF model
    if first and split is not None and tied:  # stage 0's head rows are its embeddings' first v0 rows: no copy
        first_head = nn.Linear(hf_config.hidden_size, split, bias=False, device="meta")
        first_head.weight = nn.Parameter(owned[arch.embed].weight[:split], requires_grad=False)
    rotary = None
    if arch.rotary:
        with torch.device(device):
            rotary = type(full.get_submodule(arch.rotary))(config=hf_config)
    head = owned.get(arch.head) if last else first_head
    model = StageModel(hf_config, [owned[f"{arch.layers}.{i}"] for i in layer_range], list(layer_range),
                       embed=owned.get(arch.embed), pos_embed=owned.get(arch.pos_embed) if arch.pos_embed else None,
                       rotary=rotary, norm=owned.get(arch.norm) if last else None, head=head,
                       vocab_start=split if last and split is not None else 0)
    return model.eval()


def _head_rows(head: nn.Module, n: int) -> nn.Linear:
    """A ``Linear`` like ``head`` (on the meta device) with ``n`` output rows."""
    return nn.Linear(head.in_features, n, bias=head.bias is not None, device="meta", dtype=head.weight.dtype)
