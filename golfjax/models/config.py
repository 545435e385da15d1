"""Model configuration: one frozen `ModelConfig` per checkpoint, plus named presets.

A `ModelConfig` describes every decoder-only family golfjax supports:

- Llama 3 / 3.1 / 3.2 (`family="llama3"`): optional llama3 RoPE scaling, GQA,
  tied (3.2 1B/3B) or untied embeddings, no biases.
- Qwen 2 / 2.5 (`family="qwen2"`): bias on the q, k and v projections.
- Qwen 3 (`family="qwen3"`): RMSNorm over `head_dim` on queries and keys before
  RoPE, no qkv bias.
- Qwen 3 MoE (`family="qwen3_moe"`): Qwen 3's attention, and in the layers
  `moe_layers` names a mixture of `num_experts` SwiGLU experts of width
  `moe_mlp_dim`, `experts_per_token` of them per token
  (golfjax/models/moe.py); the other layers keep a dense MLP of `mlp_dim`.

The family only names the Hugging Face architecture to write on `save`; the model
itself is driven by the feature flags (`qkv_bias`, `qk_norm`, `tie_embeddings`,
`rope_scaling`), so a config can mix them for experiments.

`param_dtype` is the dtype parameters are stored and updated in; `compute_dtype`
is the dtype of activations, matmul inputs and the KV cache. Norm statistics,
softmax and the logits are always float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("llama3", "qwen2", "qwen3", "qwen3_moe")
DTYPES = ("float32", "bfloat16")
# golfjax/models/attention.py's IMPLEMENTATIONS (that module imports jax only).
ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cudnn", "splash")
# How the cached (prefill and decode) forward runs the layers (`decode_layers`).
DECODE_LAYERS = ("auto", "scan", "unrolled")
# Where an MoE layer's experts come from in the train step (`routing_replay`).
ROUTING_REPLAY = ("off", "rollout")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 ("llama3" rope_type) frequency scaling, as in transformers."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.factor <= 0:
            raise ValueError(f"RopeScaling.factor must be > 0, got {self.factor}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                "RopeScaling.high_freq_factor must exceed low_freq_factor, got "
                f"{self.high_freq_factor} <= {self.low_freq_factor}")
        if self.original_max_position_embeddings <= 0:
            raise ValueError("RopeScaling.original_max_position_embeddings must be "
                             f"> 0, got {self.original_max_position_embeddings}")


def _dtype_name(dtype: Any) -> str:
    """Normalises "float32", jnp.float32 or np.dtype('float32') to a name."""
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one checkpoint. Hashable, so it can be a static jit argument.

    Attributes:
      family: "llama3", "qwen2" or "qwen3"; selects the HF architecture on save.
      vocab_size: V, rows of the embedding table.
      embed_dim: D, the residual stream width (HF `hidden_size`).
      num_layers: L.
      num_heads: H query heads.
      num_kv_heads: K key/value heads; H must be a multiple of K (GQA).
      head_dim: Dh per head (HF `head_dim`, default D / H).
      mlp_dim: F, SwiGLU hidden width (HF `intermediate_size`).
      rope_theta: RoPE base.
      rope_scaling: llama3 RoPE scaling, or None for plain RoPE.
      rms_norm_eps: epsilon inside every RMSNorm.
      qkv_bias: add a bias to the q, k, v projections (Qwen 2).
      qk_norm: RMSNorm on queries and keys over head_dim (Qwen 3).
      tie_embeddings: the LM head is the embedding table transposed.
      param_dtype: "float32" or "bfloat16" (jnp dtypes are accepted and normalised).
      compute_dtype: "float32" or "bfloat16".
      max_position: HF `max_position_embeddings` (metadata; RoPE has no table).
      remat: rematerialise each layer in the backward pass (saves activations).
      attention: the attention implementation, one of
        `golfjax.models.attention.IMPLEMENTATIONS` ("auto" picks by platform).
      attention_block: query/key block of the blockwise attention.
      mlp_chunk: with `remat`, the MLP runs over at most this many tokens
        (rows x positions) at a time, each chunk recomputed in the backward
        pass, so its intermediates stop growing with the sequence.
      decode_layers: how the forward pass with a KV cache runs the layers:
        "scan" (one compiled layer body over a cache stacked over layers),
        "unrolled" (one copy of the layer per layer, each over its own cache
        buffers: what XLA's CPU backend runs fastest, see
        golfjax/models/cache.py) or "auto" (`resolve_decode_layers`: scanned
        on TPU, unrolled on CPU and GPU).
      num_experts: E experts of each MoE layer; 0 for a dense model (HF
        `num_experts`).
      experts_per_token: A, the experts each token is routed to (HF
        `num_experts_per_tok`).
      moe_mlp_dim: each expert's SwiGLU width (HF `moe_intermediate_size`).
      norm_topk_prob: renormalise the A routing weights to sum to 1.
      decoder_sparse_step: layer i is an MoE layer iff (i + 1) is a multiple
        of it and i is not in `mlp_only_layers` (HF's rule).
      mlp_only_layers: layers that keep a dense MLP of `mlp_dim`.
      routing_replay: "off", or "rollout": the train step routes each token
        the sampler routed (recorded per layer) to the same experts, with
        the current router's weights for them (docs/algorithms.md).
    """

    family: str = "llama3"
    vocab_size: int = 256
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 128
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    max_position: int = 4096
    remat: bool = False
    attention: str = "auto"
    attention_block: int = 512
    mlp_chunk: int = 8192
    decode_layers: str = "auto"
    num_experts: int = 0
    experts_per_token: int = 0
    moe_mlp_dim: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    routing_replay: str = "off"

    def __post_init__(self) -> None:
        # Frozen: normalise dtypes through object.__setattr__ so equal configs hash
        # equal whether built from strings or jnp dtypes.
        for field in ("param_dtype", "compute_dtype"):
            name = _dtype_name(getattr(self, field))
            if name not in DTYPES:
                raise ValueError(f"ModelConfig.{field} must be one of {DTYPES}, got "
                                 f"{getattr(self, field)!r}")
            object.__setattr__(self, field, name)
        if self.family not in FAMILIES:
            raise ValueError(
                f"ModelConfig.family must be one of {FAMILIES}, got {self.family!r}")
        for field in ("vocab_size", "embed_dim", "num_layers", "num_heads",
                      "num_kv_heads", "head_dim", "mlp_dim", "max_position",
                      "attention_block", "mlp_chunk"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"ModelConfig.{field} must be a positive int, got {value!r}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"ModelConfig.attention must be one of "
                             f"{ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        if self.decode_layers not in DECODE_LAYERS:
            raise ValueError(f"ModelConfig.decode_layers must be one of "
                             f"{DECODE_LAYERS}, got {self.decode_layers!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_theta <= 0:
            raise ValueError(
                f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.rms_norm_eps <= 0:
            raise ValueError(
                f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling,
                                                            RopeScaling):
            raise ValueError("ModelConfig.rope_scaling must be a RopeScaling or None, "
                             f"got {self.rope_scaling!r}")
        self._check_experts()

    def _check_experts(self) -> None:
        """The MoE fields: consistent with `num_experts` (0: all unused)."""
        only = tuple(sorted(set(self.mlp_only_layers)))
        if not all(isinstance(i, int) and 0 <= i < self.num_layers for i in only):
            raise ValueError("ModelConfig.mlp_only_layers must be layer indices in "
                             f"[0, {self.num_layers}), got {self.mlp_only_layers!r}")
        object.__setattr__(self, "mlp_only_layers", only)
        if self.routing_replay not in ROUTING_REPLAY:
            raise ValueError(f"ModelConfig.routing_replay must be one of "
                             f"{ROUTING_REPLAY}, got {self.routing_replay!r}")
        if self.family == "qwen3_moe" and self.num_experts <= 0:
            raise ValueError("ModelConfig.num_experts must be > 0 for family "
                             f"'qwen3_moe', got {self.num_experts!r}")
        if self.num_experts < 0 or self.decoder_sparse_step < 1:
            field = "num_experts" if self.num_experts < 0 else "decoder_sparse_step"
            raise ValueError(f"ModelConfig.{field} must be >= "
                             f"{0 if field == 'num_experts' else 1}, got "
                             f"{getattr(self, field)!r}")
        if not self.num_experts:
            if self.routing_replay != "off":
                raise ValueError("ModelConfig.routing_replay="
                                 f"{self.routing_replay!r} needs an MoE model "
                                 "(num_experts > 0)")
            return
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError("ModelConfig.experts_per_token must be in [1, "
                             f"num_experts={self.num_experts}], got "
                             f"{self.experts_per_token!r}")
        if self.moe_mlp_dim <= 0:
            raise ValueError("ModelConfig.moe_mlp_dim must be a positive int, got "
                             f"{self.moe_mlp_dim!r}")

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """The indices of the MoE layers, in order (none for a dense model)."""
        if not self.num_experts:
            return ()
        return tuple(i for i in range(self.num_layers)
                     if (i + 1) % self.decoder_sparse_step == 0
                     and i not in self.mlp_only_layers)

    @property
    def param_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def compute_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, h, f = self.embed_dim, self.head_dim, self.mlp_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        norms = 2 * d + (2 * h if self.qk_norm else 0)
        moe = len(self.moe_layers)
        mlps = ((self.num_layers - moe) * 3 * d * f +
                moe * self.num_experts * (d + 3 * d * self.moe_mlp_dim))
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return (self.vocab_size * d + self.num_layers * (attn + norms) + mlps + d
                + head)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def resolve_decode_layers(config: ModelConfig, platform: str) -> str:
    """The cached forward's layers, "scan" or "unrolled"; "auto" by platform.

    `platform` is the JAX platform the cached forward runs on ("cpu", "gpu",
    "tpu"). Scanning compiles one layer body instead of L, but each step then
    reads every layer's cache and weights through a dynamic slice of the
    stacked arrays. XLA's TPU backend fuses such a slice into its consumer;
    its CPU backend copies it (and converts a bf16 stack to float32,
    golfjax/models/cache.py), and its GPU backend hands a matmul a sliced
    operand in place only with `--xla_gpu_enable_dynamic_slice_fusion`, off
    by default, so a scanned decode step there may copy every layer's cache
    slice. Hence "auto" scans on TPU only; `benchmarks/accelerator.py`
    measures both on a GPU.
    """
    if config.decode_layers != "auto":
        return config.decode_layers
    return "scan" if platform == "tpu" else "unrolled"


def _qwen3(**dims: Any) -> ModelConfig:
    """A Qwen 3 dense checkpoint: what the family's config.json files share."""
    return ModelConfig(
        family="qwen3", vocab_size=151936, num_kv_heads=8, head_dim=128,
        rope_theta=1e6, qk_norm=True, max_position=40960,
        param_dtype="bfloat16", compute_dtype="bfloat16", **dims)


# Presets. `tiny` is for unit tests; the others are small models for the built-in
# tasks and benchmarks, plus the exact shapes of the public checkpoints golfjax
# targets (useful for abstract shape/sharding checks without downloading them).
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "tiny_qwen2": ModelConfig(family="qwen2", qkv_bias=True,
                              tie_embeddings=True),
    "tiny_qwen3": ModelConfig(family="qwen3", qk_norm=True),
    # Qwen 3 MoE for CPU: 8 experts of width 32, 2 per token, in both layers;
    # 128 ids, so the built-in tasks' character tokenizer fits.
    "tiny_qwen3_moe": ModelConfig(
        family="qwen3_moe", vocab_size=128, qk_norm=True, num_experts=8,
        experts_per_token=2, moe_mlp_dim=32, norm_topk_prob=True),
    # For the built-in tasks (arith, constraints) with their 103-id character
    # tokenizer: ~1M parameters, trained from scratch by the cold start on CPU.
    "task_1m": ModelConfig(
        family="llama3", vocab_size=128, embed_dim=128, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=512,
        tie_embeddings=True, max_position=1024),
    "small_20m": ModelConfig(
        family="qwen3", vocab_size=8192, embed_dim=384, num_layers=12,
        num_heads=6, num_kv_heads=2, head_dim=64, mlp_dim=1024, qk_norm=True,
        tie_embeddings=True, rope_theta=1e6, max_position=2048),
    "base_100m": ModelConfig(
        family="llama3", vocab_size=32768, embed_dim=768, num_layers=12,
        num_heads=12, num_kv_heads=4, head_dim=64, mlp_dim=2048,
        tie_embeddings=True, rope_theta=5e5, max_position=4096),
    "qwen2.5-0.5b": ModelConfig(
        family="qwen2", vocab_size=151936, embed_dim=896, num_layers=24,
        num_heads=14, num_kv_heads=2, head_dim=64, mlp_dim=4864,
        rope_theta=1e6, qkv_bias=True, tie_embeddings=True,
        max_position=32768, param_dtype="bfloat16", compute_dtype="bfloat16"),
    "qwen3-0.6b": ModelConfig(
        family="qwen3", vocab_size=151936, embed_dim=1024, num_layers=28,
        num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=3072,
        rope_theta=1e6, qk_norm=True, tie_embeddings=True,
        max_position=40960, param_dtype="bfloat16", compute_dtype="bfloat16"),
    # Qwen3-30B-A3B(-Base): 48 layers, each 128 experts of width 768 with 8
    # active per token: 30.5B parameters, 3.3B active per token.
    "qwen3-30b-a3b": ModelConfig(
        family="qwen3_moe", vocab_size=151936, embed_dim=2048, num_layers=48,
        num_heads=32, num_kv_heads=4, head_dim=128, mlp_dim=6144, rope_theta=1e6,
        qk_norm=True, max_position=40960, num_experts=128, experts_per_token=8,
        moe_mlp_dim=768, norm_topk_prob=True, param_dtype="bfloat16",
        compute_dtype="bfloat16"),
    "llama3.2-1b": ModelConfig(
        family="llama3", vocab_size=128256, embed_dim=2048, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
        rope_theta=5e5, rope_scaling=RopeScaling(factor=32.0),
        rms_norm_eps=1e-5, tie_embeddings=True, max_position=131072,
        param_dtype="bfloat16", compute_dtype="bfloat16"),
    # The checkpoints the papers' runs train (GOLF: Qwen3-4B/8B; VESPO's
    # dense stand-in Qwen3-8B) and those their baselines use, with the dims
    # of each one's config.json; weights still come from `model.hf_path`.
    "qwen3-1.7b": _qwen3(embed_dim=2048, num_layers=28, num_heads=16, mlp_dim=6144,
                         tie_embeddings=True),
    "qwen3-4b": _qwen3(embed_dim=2560, num_layers=36, num_heads=32, mlp_dim=9728,
                       tie_embeddings=True),
    "qwen3-8b": _qwen3(embed_dim=4096, num_layers=36, num_heads=32, mlp_dim=12288,
                       tie_embeddings=False),
    "qwen2.5-math-1.5b": ModelConfig(
        family="qwen2", vocab_size=151936, embed_dim=1536, num_layers=28,
        num_heads=12, num_kv_heads=2, head_dim=128, mlp_dim=8960,
        rope_theta=1e4, qkv_bias=True, tie_embeddings=True,
        max_position=4096, param_dtype="bfloat16", compute_dtype="bfloat16"),
    "qwen2.5-math-7b": ModelConfig(
        family="qwen2", vocab_size=152064, embed_dim=3584, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18944,
        rope_theta=1e4, qkv_bias=True, tie_embeddings=False,
        max_position=4096, param_dtype="bfloat16", compute_dtype="bfloat16"),
    "llama3.1-8b": ModelConfig(
        family="llama3", vocab_size=128256, embed_dim=4096, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336,
        rope_theta=5e5, rope_scaling=RopeScaling(factor=8.0),
        rms_norm_eps=1e-5, tie_embeddings=False, max_position=131072,
        param_dtype="bfloat16", compute_dtype="bfloat16"),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(
            f"Unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
