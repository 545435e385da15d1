"""Decoder-only transformer (Llama 3, Qwen 2/2.5, Qwen 3) used as a pure function.

The modules are Flax NNX; everything outside this file sees only a *params pytree*:
a nested dict of arrays, `nnx.to_pure_dict` of the model's `nnx.Param` state:

  {"embed": {"embedding": V x D},
   "layers": {"attn_norm": {"scale": L x D},
              "attn": {"q": L x D x N x H, "k"/"v": L x D x K x H, "o": L x N x H x D,
                       ["q_bias": L x N x H, "k_bias"/"v_bias": L x K x H,]
                       ["q_norm"/"k_norm": {"scale": L x H}]},
              "mlp_norm": {"scale": L x D},
              "mlp": {"gate"/"up": L x D x F, "down": L x F x D}},
   "final_norm": {"scale": D},
   ["lm_head": D x V]}            # absent when embeddings are tied

Layer parameters are stacked on a leading `layers` axis and run with `lax.scan`
(each layer optionally rematerialised), so compile time does not grow with depth.
`logical_axes(config)` gives the same tree with each leaf's logical axis names, and
`param_shardings(config, mesh)` the NamedShardings the rules in golfjax/sharding.py
assign.

The forward pass (`hidden` and `unembed` split it in two, see below):

  logits_BxTxV, cache = apply(params, tokens_BxT, positions_BxT, attention_mask_BxS,
                              cache=None, *, config)

is pure and jit-friendly; `config` is a hashable frozen dataclass, so jit it as
`jax.jit(apply, static_argnames="config")` or `functools.partial(apply,
config=config)`. Mask semantics (B rows, T new tokens, S key slots):

- without a cache, S = T and `attention_mask_BxS` marks real tokens of the batch;
- with a cache, S = cache.max_length and the T tokens occupy slots
  [cache.index, cache.index + T) (see golfjax/models/cache.py);
- a query in slot q sees key slot s iff `attention_mask_BxS[b, s] and s <= q`.

`positions_BxT` are RoPE positions only; for a left-padded row they count from its
first real token (e.g. `clip(cumsum(mask) - 1, 0)`). Rows/positions that are
padding produce finite garbage logits the caller masks out. Logits are float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from golfjax import sharding as sharding_lib
from golfjax.models.cache import KVCache
from golfjax.models.config import ModelConfig
from golfjax.models.layers import Block, RMSNorm, _normal, _param, rope_sin_cos

Params = dict[str, Any]


class Embed(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = _param(_normal, rngs.params(),
                            (config.vocab_size, config.embed_dim),
                            config.param_jnp_dtype, ("vocab", "embed"))


class Transformer(nnx.Module):
  """Token embedding, L scanned `Block`s, final RMSNorm and LM head."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = Embed(config, rngs=rngs)

    # One Block per layer, created under vmap so each parameter gains a leading
    # `layers` axis (and that name in its sharding metadata).
    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs: nnx.Rngs) -> Block:
      return Block(config, rngs=rngs)

    self.layers = make_layers(rngs)
    self.final_norm = RMSNorm(config.embed_dim, "embed", config)
    if not config.tie_embeddings:
      self.lm_head = _param(_normal, rngs.params(),
                            (config.embed_dim, config.vocab_size),
                            config.param_jnp_dtype, ("embed", "vocab"))

  def __call__(
      self,
      tokens_BxT: jax.Array,
      positions_BxT: jax.Array,
      attention_mask_BxS: jax.Array,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    x_BxTxD, new_cache = self.hidden(tokens_BxT, positions_BxT,
                                     attention_mask_BxS, cache)
    return self.unembed(x_BxTxD), new_cache

  def hidden(
      self,
      tokens_BxT: jax.Array,
      positions_BxT: jax.Array,
      attention_mask_BxS: jax.Array,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states `x_BxTxD` (compute dtype) and the new cache."""
    c = self.config
    dt = c.compute_jnp_dtype
    _, t = tokens_BxT.shape
    embedding_VxD = self.embed.embedding[...]
    x_BxTxD = jnp.take(embedding_VxD, tokens_BxT, axis=0).astype(dt)
    sin_BxTxH, cos_BxTxH = rope_sin_cos(positions_BxT, c)

    write_index = (jnp.zeros((), jnp.int32) if cache is None else
                   cache.index.astype(jnp.int32))
    s = attention_mask_BxS.shape[1]
    query_slot_T = write_index + jnp.arange(t, dtype=jnp.int32)
    causal_TxS = (jnp.arange(s, dtype=jnp.int32)[None, :] <=
                  query_slot_T[:, None])
    mask_BxTxS = attention_mask_BxS.astype(bool)[:, None, :] & causal_TxS[None]

    layers_def, layers_state = nnx.split(self.layers)

    def run_layer(carry: tuple[Any, ...], xs: tuple[Any, jax.Array]):
      layer_state, layer = xs
      block = nnx.merge(layers_def, layer_state)
      x, kv = carry[0], (carry[1:] or None)
      x, kv = block(x, sin_BxTxH, cos_BxTxH, mask_BxTxS, kv, layer, write_index)
      return (x,) + (kv or ()), None

    if c.remat:
      run_layer = jax.checkpoint(run_layer)
    carry = (x_BxTxD,) if cache is None else (
        x_BxTxD, cache.k_LxBxSxKxH, cache.v_LxBxSxKxH)
    carry, _ = jax.lax.scan(
        run_layer, carry,
        (layers_state, jnp.arange(c.num_layers, dtype=jnp.int32)))
    x_BxTxD = self.final_norm(carry[0])
    new_cache = None if cache is None else KVCache(
        k_LxBxSxKxH=carry[1], v_LxBxSxKxH=carry[2], index=write_index + t)
    return x_BxTxD, new_cache

  def unembed(self, x_BxTxD: jax.Array) -> jax.Array:
    """float32 logits of hidden states (any leading shape), via the LM head."""
    dt = self.config.compute_jnp_dtype
    x_BxTxD = x_BxTxD.astype(dt)
    if self.config.tie_embeddings:
      return jnp.einsum("...d,vd->...v", x_BxTxD,
                        self.embed.embedding[...].astype(dt),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", x_BxTxD, self.lm_head[...].astype(dt),
                      preferred_element_type=jnp.float32)


def _make_model(config: ModelConfig, key: jax.Array) -> Transformer:
  return Transformer(config, rngs=nnx.Rngs(params=key))


@functools.lru_cache(maxsize=64)
def _graphdef_and_abstract(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  model = nnx.eval_shape(lambda: _make_model(config, jax.random.key(0)))
  return nnx.split(model, nnx.Param)


def abstract_params(config: ModelConfig) -> Params:
  """The params tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
  _, state = _graphdef_and_abstract(config)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      nnx.to_pure_dict(state))


def logical_axes(config: ModelConfig) -> Params:
  """The params tree with a tuple of logical axis names in place of each array."""
  _, state = _graphdef_and_abstract(config)
  names = jax.tree.map(lambda v: tuple(v.get_metadata()["out_sharding"]), state,
                       is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(names)


def param_shardings(config: ModelConfig, mesh: Mesh,
                    rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES
                    ) -> Params:
  """NamedShardings for the params tree; raises ValueError naming a bad parameter."""
  return sharding_lib.logical_shardings(abstract_params(config),
                                        logical_axes(config), mesh, rules)


def init_params(config: ModelConfig, key: jax.Array, mesh: Mesh | None = None,
                rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES) -> Params:
  """Random parameters (normal(0.02) matrices, unit norms, zero biases).

  With a mesh, initialisation is jitted with `out_shardings` from the rules, so each
  device only ever materialises its own shards.
  """

  def init(key: jax.Array) -> Params:
    return nnx.to_pure_dict(nnx.state(_make_model(config, key), nnx.Param))

  out_shardings = None if mesh is None else param_shardings(config, mesh, rules)
  return jax.jit(init, out_shardings=out_shardings)(key)


def apply(
    params: Params,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    attention_mask_BxS: jax.Array,
    cache: KVCache | None = None,
    *,
    config: ModelConfig,
) -> tuple[jax.Array, KVCache | None]:
  """Forward pass: float32 `logits_BxTxV` and the updated cache (None without one).

  Args:
    params: the params tree (see the module docstring).
    tokens_BxT: int token ids.
    positions_BxT: int RoPE positions of the tokens.
    attention_mask_BxS: bool/int, True for real tokens; S = T without a cache,
      S = cache.max_length with one.
    cache: a `KVCache` from `init_cache`, or None for a plain forward pass.
    config: the model config (static under jit).
  """
  return _merge(params, config)(tokens_BxT, positions_BxT, attention_mask_BxS,
                                 cache)


def hidden(
    params: Params,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    attention_mask_BxS: jax.Array,
    cache: KVCache | None = None,
    *,
    config: ModelConfig,
) -> tuple[jax.Array, KVCache | None]:
  """`apply` without the LM head: final-normed `h_BxTxD` (compute dtype), cache.

  With `unembed`, lets a caller compute logits a chunk of positions at a time
  (e.g. log-probs without materialising B x T x V); `apply == unembed . hidden`.
  """
  return _merge(params, config).hidden(tokens_BxT, positions_BxT,
                                       attention_mask_BxS, cache)


def unembed(params: Params, h_BxTxD: jax.Array, *,
            config: ModelConfig) -> jax.Array:
  """float32 logits `[..., V]` from `hidden`'s output (any leading dims)."""
  return _merge(params, config).unembed(h_BxTxD)


def _merge(params: Params, config: ModelConfig) -> Transformer:
  graphdef, _ = _graphdef_and_abstract(config)
  return nnx.merge(graphdef, params)
