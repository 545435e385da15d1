"""Hugging Face checkpoints: `load` and `save` for Llama 3, Qwen 2/2.5, Qwen 3 and
Qwen 3 MoE.

  config, params = load(path, mesh=None, dtype=None, compute_dtype=None, rules=...)
  save(path, config, params, max_shard_bytes=5 * 2**30)

`load` reads `config.json` in the transformers 4.x form (`rope_theta`,
`rope_scaling`, `torch_dtype`) or the 5.x form (`rope_parameters`, `dtype`), and
the weights from `model.safetensors` or a sharded `model.safetensors.index.json`.
Each parameter is created with `jax.make_array_from_callback` directly on its
NamedSharding (`golfjax.sharding` rules on `mesh`, or the first device). The host
holds at most one full HF tensor plus the shard being assembled: an unstacked
tensor (embedding, final norm, LM head) is read whole; a stacked layer parameter
is assembled per device shard by reading one layer's tensor at a time and keeping
only that shard's slice. A Qwen 3 MoE checkpoint stores each expert's
`gate_proj/up_proj/down_proj` as its own tensor; they are stacked on load into the
`E x ...` expert axis of golfjax's parameters (one expert's tensor read at a time,
and only the experts of the shard) and written back one per expert on save.

`save` writes safetensors (sharded with an index above `max_shard_bytes`) plus a
`config.json` holding both the 4.x and 5.x keys, so transformers 4.51+ and 5.x load
it with `AutoModelForCausalLM.from_pretrained`. Each parameter is fetched to the
host once, one at a time.

Errors name what is wrong: a missing directory/file, an unsupported architecture
(listing the supported ones), a missing tensor (its key), a shape mismatch (key and
both shapes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from golfjax import sharding as sharding_lib
from golfjax.models import transformer
from golfjax.models.config import ModelConfig, RopeScaling
from golfjax.models.safetensors_io import SafetensorsFile, write_file

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama3",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
_MODEL_TYPES = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                "qwen3_moe": "qwen3_moe"}
_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


# --------------------------------------------------------------------------- config

def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    # 5.x: rope_parameters = {"rope_type", "rope_theta", ...scaling keys}.
    # 4.x: rope_theta at top level, rope_scaling = {"rope_type"|"type", ...} or null.
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type in ("default", None):
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(f"Unsupported rope_type {rope_type!r}; supported: "
                         "'default', 'llama3'")
    return float(theta), RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(
            scaling["original_max_position_embeddings"]))


def config_from_hf(hf: dict[str, Any], dtype: str | None = None,
                   compute_dtype: str | None = None) -> ModelConfig:
    """A ModelConfig from a parsed `config.json`.

    Args:
      hf: the config.json dict.
      dtype: param dtype; default the checkpoint's (`dtype`/`torch_dtype`) when it
        is float32 or bfloat16, else float32.
      compute_dtype: default `dtype`.
    """
    archs = hf.get("architectures") or []
    supported = [a for a in archs if a in ARCHITECTURES]
    if not supported:
        raise ValueError(f"Unsupported architecture {archs or hf.get('model_type')!r};"
                         f" supported: {sorted(ARCHITECTURES)}")
    family = ARCHITECTURES[supported[0]]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Unsupported hidden_act {hf['hidden_act']!r}; need 'silu'")
    if hf.get("use_sliding_window"):
        raise ValueError("use_sliding_window=true is not supported")
    if family == "llama3" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ValueError("Llama attention_bias / mlp_bias are not supported")
    if family in ("qwen3", "qwen3_moe") and hf.get("attention_bias"):
        raise ValueError("Qwen 3 attention_bias is not supported")
    ckpt_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype is None:
        dtype = ckpt_dtype if ckpt_dtype in ("float32", "bfloat16") else "float32"
    theta, scaling = _rope_from_hf(hf)
    num_heads = int(hf["num_attention_heads"])
    experts = {}
    if family == "qwen3_moe":
        # transformers 4.x writes `num_experts`, 5.x `num_local_experts`.
        experts = dict(
            num_experts=int(hf.get("num_experts") or hf["num_local_experts"]),
            experts_per_token=int(hf["num_experts_per_tok"]),
            moe_mlp_dim=int(hf["moe_intermediate_size"]),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            decoder_sparse_step=int(hf.get("decoder_sparse_step", 1)),
            mlp_only_layers=tuple(int(i) for i in hf.get("mlp_only_layers") or ()))
    return ModelConfig(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        embed_dim=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
        mlp_dim=int(hf["intermediate_size"]),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=family == "qwen2",
        qk_norm=family in ("qwen3", "qwen3_moe"),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        param_dtype=dtype,
        compute_dtype=compute_dtype or dtype,
        max_position=int(hf.get("max_position_embeddings", 4096)),
        **experts,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """config.json contents readable by transformers 4.51+ and 5.x."""
    c = config
    want = {"llama3": (False, False), "qwen2": (True, False),
            "qwen3": (False, True), "qwen3_moe": (False, True)}[c.family]
    if (c.qkv_bias, c.qk_norm) != want:
        raise ValueError(
            f"family {c.family!r} needs qkv_bias={want[0]}, qk_norm={want[1]}; got "
            f"qkv_bias={c.qkv_bias}, qk_norm={c.qk_norm}: no HF architecture matches")
    arch = {v: k for k, v in ARCHITECTURES.items()}[c.family]
    scaling = None if c.rope_scaling is None else {
        "rope_type": "llama3", **dataclasses.asdict(c.rope_scaling)}
    hf: dict[str, Any] = {
        "architectures": [arch],
        "model_type": _MODEL_TYPES[c.family],
        "vocab_size": c.vocab_size,
        "hidden_size": c.embed_dim,
        "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        # 4.x keys.
        "rope_theta": c.rope_theta,
        "rope_scaling": scaling,
        "torch_dtype": c.param_dtype,
        # 5.x keys.
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                            **(scaling or {})},
        "dtype": c.param_dtype,
    }
    if c.family == "llama3":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False)
        if c.family in ("qwen3", "qwen3_moe"):
            hf.update(attention_bias=False)
    if c.family == "qwen3_moe":
        hf.update(num_experts=c.num_experts, num_local_experts=c.num_experts,
                  num_experts_per_tok=c.experts_per_token,
                  moe_intermediate_size=c.moe_mlp_dim, norm_topk_prob=c.norm_topk_prob,
                  decoder_sparse_step=c.decoder_sparse_step,
                  mlp_only_layers=list(c.mlp_only_layers),
                  output_router_logits=False, router_aux_loss_coef=0.001)
    return hf


# ------------------------------------------------------------------- tensor mapping

@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One params leaf and its HF tensor(s).

    In `hf_key`, `{i}` is the HF layer index and `{j}` the expert's. A
    stacked leaf's entry s is HF layer `layers[s]` (its second axis the
    `experts` experts, when there are some); an unstacked one has no layers.
    """

    path: tuple[str, ...]
    hf_key: str
    hf_shape: tuple[int, ...]  # Of one HF tensor (one layer's, one expert's).
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layers: tuple[int, ...] = ()
    experts: int = 0

    @property
    def stacked(self) -> bool:
        return bool(self.layers)

    def key(self, layer: int | None = None, expert: int | None = None) -> str:
        """The HF tensor name of stack entry `layer`'s `expert`."""
        if layer is None:
            return self.hf_key
        return self.hf_key.format(i=self.layers[layer], j=expert)


def _tensors(config: ModelConfig) -> list[_Tensor]:
    c = config
    d, n, k, h, f, v = (c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim,
                        c.mlp_dim, c.vocab_size)
    e, fe = c.num_experts, c.moe_mlp_dim
    same = lambda x: x  # noqa: E731

    def proj(heads: int) -> tuple[Callable, Callable]:
        # torch Linear weight [heads*H, D] <-> ours [D, heads, H].
        return (lambda w: w.T.reshape(d, heads, h),
                lambda w: w.reshape(d, heads * h).T)

    def bias(heads: int) -> tuple[Callable, Callable]:
        return (lambda b: b.reshape(heads, h), lambda b: b.reshape(heads * h))

    transpose = (lambda w: w.T, lambda w: w.T)
    pre = "model.layers.{i}."
    out = [_Tensor(("embed", "embedding"), "model.embed_tokens.weight", (v, d),
                   same, same)]
    layer = [
        (("attn_norm", "scale"), "input_layernorm.weight", (d,), (same, same)),
        (("attn", "q"), "self_attn.q_proj.weight", (n * h, d), proj(n)),
        (("attn", "k"), "self_attn.k_proj.weight", (k * h, d), proj(k)),
        (("attn", "v"), "self_attn.v_proj.weight", (k * h, d), proj(k)),
        (("attn", "o"), "self_attn.o_proj.weight", (d, n * h),
         (lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T)),
        (("mlp_norm", "scale"), "post_attention_layernorm.weight", (d,),
         (same, same)),
    ]
    dense = [
        (("mlp", "gate"), "mlp.gate_proj.weight", (f, d), transpose),
        (("mlp", "up"), "mlp.up_proj.weight", (f, d), transpose),
        (("mlp", "down"), "mlp.down_proj.weight", (d, f), transpose),
    ]
    # Each expert's tensor; the router is HF's `gate` ([E, D]).
    sparse = [
        (("moe", "router"), "mlp.gate.weight", (e, d), transpose),
        (("moe", "gate"), "mlp.experts.{j}.gate_proj.weight", (fe, d), transpose),
        (("moe", "up"), "mlp.experts.{j}.up_proj.weight", (fe, d), transpose),
        (("moe", "down"), "mlp.experts.{j}.down_proj.weight", (d, fe), transpose),
    ]
    if c.qkv_bias:
        layer += [
            (("attn", "q_bias"), "self_attn.q_proj.bias", (n * h,), bias(n)),
            (("attn", "k_bias"), "self_attn.k_proj.bias", (k * h,), bias(k)),
            (("attn", "v_bias"), "self_attn.v_proj.bias", (k * h,), bias(k)),
        ]
    if c.qk_norm:
        layer += [
            (("attn", "q_norm", "scale"), "self_attn.q_norm.weight", (h,),
             (same, same)),
            (("attn", "k_norm", "scale"), "self_attn.k_norm.weight", (h,),
             (same, same)),
        ]
    moe = c.moe_layers
    stacks = [("layers", moe, layer + sparse)] if moe else [
        ("layers", tuple(range(c.num_layers)), layer + dense)]
    if moe and len(moe) < c.num_layers:
        stacks.append(("dense_layers",
                       tuple(i for i in range(c.num_layers) if i not in moe),
                       layer + dense))
    out += [_Tensor((stack,) + path, pre + key, shape, *fns, layers=ids,
                    experts=e if "{j}" in key else 0)
            for stack, ids, entries in stacks for path, key, shape, fns in entries]
    out.append(_Tensor(("final_norm", "scale"), "model.norm.weight", (d,), same, same))
    if not c.tie_embeddings:
        out.append(_Tensor(("lm_head",), "lm_head.weight", (v, d), *transpose))
    return out


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------------------- load

class _Checkpoint:
    """Tensor name -> file for a single-file or index-sharded checkpoint."""

    def __init__(self, path: str):
        index_path = os.path.join(path, _INDEX_FILE)
        single_path = os.path.join(path, _SINGLE_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
            for name in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(path, name)):
                    raise FileNotFoundError(
                        f"{index_path} lists {name}, which is missing from {path}")
            self._file_of = {k: os.path.join(path, v) for k, v in weight_map.items()}
        elif os.path.exists(single_path):
            self._file_of = {k: single_path for k in SafetensorsFile(single_path).keys()}
        else:
            raise FileNotFoundError(
                f"No weights in {path}: expected {_SINGLE_FILE} or {_INDEX_FILE}")
        self._files: dict[str, SafetensorsFile] = {}
        self.path = path

    def _file(self, key: str) -> SafetensorsFile:
        if key not in self._file_of:
            raise ValueError(f"Checkpoint {self.path} has no tensor {key!r}")
        name = self._file_of[key]
        if name not in self._files:
            self._files[name] = SafetensorsFile(name)
        return self._files[name]

    def read(self, key: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        file = self._file(key)
        if file.shape(key) != tuple(expected_shape):
            raise ValueError(f"Tensor {key!r} in {self.path} has shape "
                             f"{file.shape(key)}, expected {tuple(expected_shape)}")
        return file.read(key)

    def check(self, key: str, expected_shape: tuple[int, ...]) -> None:
        shape = self._file(key).shape(key)
        if shape != tuple(expected_shape):
            raise ValueError(f"Tensor {key!r} in {self.path} has shape {shape}, "
                             f"expected {tuple(expected_shape)}")


def _index_key(index: tuple[slice, ...]) -> tuple[tuple[Any, ...], ...]:
    return tuple((s.start, s.stop, s.step) for s in index)


def _load_tensor(ckpt: _Checkpoint, t: _Tensor, shape: tuple[int, ...],
                 dtype: np.dtype, sharding: jax.sharding.Sharding) -> jax.Array:
    cast = lambda x: np.asarray(x, dtype=dtype)  # noqa: E731
    if not t.stacked:
        full = cast(t.to_ours(ckpt.read(t.key(), t.hf_shape)))
        return jax.make_array_from_callback(shape, sharding, lambda idx: full[idx])

    num_layers = shape[0]
    experts = [None] if not t.experts else range(t.experts)
    for i in range(num_layers):  # Fail on a missing key before reading any data.
        for j in experts:
            ckpt.check(t.key(i, j), t.hf_shape)
    shards: dict[Any, np.ndarray] = {}  # Replicated shards are read once.

    def read(i: int, j: int | None, idx: tuple[slice, ...]) -> np.ndarray:
        return cast(t.to_ours(ckpt.read(t.key(i, j), t.hf_shape))[idx])

    def read_shard(idx: tuple[slice, ...]) -> np.ndarray:
        key = _index_key(idx)
        if key not in shards:
            layers = range(num_layers)[idx[0]]
            if not t.experts:
                shards[key] = np.stack([read(i, None, idx[1:]) for i in layers])
            else:
                shards[key] = np.stack([
                    np.stack([read(i, j, idx[2:]) for j in range(t.experts)[idx[1]]])
                    for i in layers])
        return shards[key]

    return jax.make_array_from_callback(shape, sharding, read_shard)


def load(path: str, mesh: Mesh | None = None, dtype: str | None = None,
         compute_dtype: str | None = None,
         rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES,
         ) -> tuple[ModelConfig, transformer.Params]:
    """Loads a Llama 3 / Qwen 2 / Qwen 3 / Qwen 3 MoE checkpoint directory.

    Args:
      path: a local directory with config.json and safetensors weights.
      mesh: place each parameter on its rule sharding over this mesh; None puts
        everything on the first device.
      dtype: param dtype ("float32"/"bfloat16"); default the checkpoint's.
      compute_dtype: default `dtype`.
      rules: logical axis rules (golfjax.sharding.LOGICAL_RULES).

    Returns:
      (config, params) with params as documented in golfjax/models/transformer.py.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Checkpoint directory {path} does not exist")
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No config.json in {path}")
    with open(config_path) as f:
        config = config_from_hf(json.load(f), dtype, compute_dtype)
    ckpt = _Checkpoint(path)
    abstract = transformer.abstract_params(config)
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    else:
        shardings = transformer.param_shardings(config, mesh, rules)
    params: dict[str, Any] = {}
    for t in _tensors(config):
        a = _get(abstract, t.path)
        _set(params, t.path, _load_tensor(ckpt, t, tuple(a.shape), np.dtype(a.dtype),
                                          _get(shardings, t.path)))
    return config, params


# ---------------------------------------------------------------------------- save

# (HF key, tensor, (stack entry, expert) or Nones, HF shape, dtype) of one file entry.
_Entry = tuple[str, _Tensor, tuple[int | None, int | None], tuple[int, ...], np.dtype]

def save(path: str, config: ModelConfig, params: transformer.Params,
         max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes `params` as an HF checkpoint (safetensors in the param dtype + config).

    Args:
      path: output directory (created if missing).
      config: the model config; its family picks the HF architecture.
      params: the params tree (any sharding; each leaf is gathered once).
      max_shard_bytes: above this, tensors are split over numbered files with a
        `model.safetensors.index.json`.
    """
    hf_config = config_to_hf(config)
    os.makedirs(path, exist_ok=True)
    # Plan (file, key, shape, dtype) from shapes alone, then stream tensors.
    plan: list[_Entry] = []
    for t in _tensors(config):
        leaf = _get(params, t.path)
        dtype = np.dtype(leaf.dtype)
        for i in (range(leaf.shape[0]) if t.stacked else [None]):
            for j in (range(t.experts) if t.experts else [None]):
                plan.append((t.key(i, j), t, (i, j), t.hf_shape, dtype))
    shards: list[list[_Entry]]
    shards, size = [[]], 0
    for entry in plan:
        nbytes = int(np.prod(entry[3])) * entry[4].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards, size = shards + [[]], 0
        shards[-1].append(entry)
        size += nbytes

    host: dict[str, Any] = {"path": None, "value": None}  # One param on host.

    def produce(entry: _Entry) -> np.ndarray:
        _, t, index, _, _ = entry
        if host["path"] != t.path:
            host["path"], host["value"] = t.path, np.asarray(
                jax.device_get(_get(params, t.path)))
        value = host["value"][tuple(i for i in index if i is not None)]
        return np.ascontiguousarray(t.to_hf(value))

    names = ([_SINGLE_FILE] if len(shards) == 1 else
             [f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
              for j in range(len(shards))])
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        by_key = {e[0]: e for e in shard}
        total += write_file(os.path.join(path, name),
                            [(e[0], e[3], e[4]) for e in shard],
                            lambda key: produce(by_key[key]))
        weight_map.update({e[0]: name for e in shard})
    index_path = os.path.join(path, _INDEX_FILE)
    if len(shards) > 1:
        with open(index_path, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                      f, indent=2)
    else:
        for stale in (index_path,):
            if os.path.exists(stale):
                os.remove(stale)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
