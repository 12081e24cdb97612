"""GPU and model-shape presets for the analytic (roofline) cost model.

GPU figures are the vendors' datasheet peaks (dense, no sparsity); the achievable fractions are assumptions,
stated here once and used by ``roofline``:

- ``flops_eff``: share of peak tensor-core FLOP/s a large bf16 GEMM reaches. A100: 0.70 (cuBLAS GEMMs of LLM
  shapes reach 210-230 of 312 TFLOP/s); H100: 0.60 (600-650 of 989 TFLOP/s without FP8 or hand-tuned kernels).
- ``bw_eff``: share of HBM bandwidth a streaming read reaches: 0.85 on both (STREAM-like copies reach 85-90%).
- ``fp32_flops``: non-tensor-core FP32 peak, used when the model runs in float32 (PyTorch's default without TF32).
- ``overhead_s``: fixed time per micro-batch on a stage (kernel launches, Python, input preparation) without CUDA
  graphs, and ``layer_overhead_s`` the launch cost of one decoder layer's ~10 kernels; both rough (+-2x).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    """Peak rates of one GPU and the fractions of them a real kernel reaches."""

    name: str
    bf16_flops: float  # dense bf16/fp16 tensor-core peak, FLOP/s
    fp32_flops: float  # FP32 (non-tensor-core) peak, FLOP/s
    hbm_bytes_s: float  # HBM bandwidth, bytes/s
    memory_gib: float
    flops_eff: float = 0.70
    bw_eff: float = 0.85
    overhead_s: float = 50e-6
    layer_overhead_s: float = 20e-6

    def peak_flops(self, dtype_bytes: int) -> float:
        """Achievable FLOP/s for a model stored in ``dtype_bytes``-byte floats (2: tensor cores, 4: FP32)."""
        return (self.bf16_flops if dtype_bytes <= 2 else self.fp32_flops) * self.flops_eff

    @property
    def bytes_s(self) -> float:
        """Achievable HBM bytes/s."""
        return self.hbm_bytes_s * self.bw_eff


# Keys are the names sim.gpu takes; "a100" is the 80 GB SXM part.
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("h100-sxm", bf16_flops=989.4e12, fp32_flops=66.9e12, hbm_bytes_s=3.35e12, memory_gib=80,
                        flops_eff=0.60),
    # H200 SXM (NVIDIA datasheet): the H100's compute with 141 GB of HBM3e at 4.8 TB/s.
    "h200": GpuSpec("h200-sxm", bf16_flops=989.4e12, fp32_flops=66.9e12, hbm_bytes_s=4.8e12, memory_gib=141,
                    flops_eff=0.60),
    "a100": GpuSpec("a100-80gb-sxm", bf16_flops=312e12, fp32_flops=19.5e12, hbm_bytes_s=2.039e12,
                             memory_gib=80),
    "a100-40gb": GpuSpec("a100-40gb-sxm", bf16_flops=312e12, fp32_flops=19.5e12, hbm_bytes_s=1.555e12,
                             memory_gib=40),
}


@dataclass(frozen=True)
class ModelShape:
    """What a roofline needs of a decoder-only transformer (biases and norms are ignored: under 0.1% of FLOPs)."""

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    gated_mlp: bool  # SwiGLU (gate, up, down projections) rather than a 2-matrix MLP
    vocab: int
    max_context: int = 4096  # the longest sequence the model supports (its max_position_embeddings), tokens

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: q, k, v, o projections and the MLP."""
        attn = 2 * self.hidden * self.num_heads * self.head_dim + 2 * self.hidden * self.num_kv_heads * self.head_dim
        return attn + (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def kv_per_token(self) -> int:
        """Key and value elements one token stores per layer."""
        return 2 * self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, hf_config, name: str | None = None) -> ModelShape:
        """The shape of a Hugging Face decoder config (Llama-like or GPT-2)."""
        h = hf_config.hidden_size
        heads = hf_config.num_attention_heads
        inter = getattr(hf_config, "intermediate_size", None) or getattr(hf_config, "n_inner", None) or 4 * h
        return cls(name or getattr(hf_config, "model_type", "hf"), hf_config.num_hidden_layers, h, heads,
                   getattr(hf_config, "num_key_value_heads", None) or heads,
                   getattr(hf_config, "head_dim", None) or h // heads, inter,
                   gated_mlp=hasattr(hf_config, "intermediate_size"), vocab=hf_config.vocab_size,
                   max_context=getattr(hf_config, "max_position_embeddings", None)
                   or getattr(hf_config, "n_positions", None) or 2048)

    def to_hf_config(self, *, num_layers: int | None = None, max_position_embeddings: int | None = None):
        """A Hugging Face config of this shape (Llama for gated MLPs, GPT-2 otherwise) to build random layers;
        positions default to the model's own context length."""
        from transformers import GPT2Config, LlamaConfig

        layers = num_layers or self.num_layers
        max_position_embeddings = max_position_embeddings or self.max_context
        if not self.gated_mlp:
            return GPT2Config(vocab_size=self.vocab, n_embd=self.hidden, n_layer=layers, n_head=self.num_heads,
                              n_inner=self.intermediate, n_positions=max_position_embeddings)
        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=layers, num_attention_heads=self.num_heads,
                           num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                           max_position_embeddings=max_position_embeddings)


# Context lengths are the models' own (config.json max_position_embeddings; GPT-3's n_ctx from the paper).
MODEL_SHAPES: dict[str, ModelShape] = {
    # GPT-3 175B (Brown et al. 2020, table 2.1): the SARATHI paper's pipeline-parallel model.
    "gpt3-175b": ModelShape("gpt3-175b", 96, 12288, 96, 96, 128, 4 * 12288, gated_mlp=False, vocab=50257,
                            max_context=2048),
    "llama-3.1-8b": ModelShape("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, gated_mlp=True, vocab=128256,
                               max_context=131072),
    "llama-3.2-1b": ModelShape("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, gated_mlp=True, vocab=128256,
                               max_context=131072),
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576, 9, 3, 64, 1536, gated_mlp=True, vocab=49152,
                               max_context=8192),
}


def gpu(name: str) -> GpuSpec:
    """The preset called ``name``; KeyError lists the presets."""
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r}; presets: {', '.join(GPUS)}") from None
