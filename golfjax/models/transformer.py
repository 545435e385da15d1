"""Decoder-only transformer (Llama 3, Qwen 2/2.5, Qwen 3, Qwen 3 MoE) used as a
pure function.

The modules are Flax NNX; everything outside this file sees only a *params pytree*:
a nested dict of arrays, `nnx.to_pure_dict` of the model's `nnx.Param` state:

  {"embed": {"embedding": V x D},
   "layers": {"attn_norm": {"scale": L x D},
              "attn": {"q": L x D x H x Dh, "k"/"v": L x D x K x Dh, "o": L x H x Dh x D,
                       ["q_bias": L x H x Dh, "k_bias"/"v_bias": L x K x Dh,]
                       ["q_norm"/"k_norm": {"scale": L x Dh}]},
              "mlp_norm": {"scale": L x D},
              "mlp": {"gate"/"up": L x D x F, "down": L x F x D}},
   "final_norm": {"scale": D},
   ["lm_head": D x V]}            # absent when embeddings are tied

In a Qwen 3 MoE model "layers" holds its MoE layers, each with
`"moe": {"router": D x E, "gate"/"up": E x D x F, "down": E x F x D}` in
place of "mlp", and "dense_layers" (same tree as a dense model's "layers")
the layers `ModelConfig.moe_layers` leaves dense, if any; each stack runs in
runs of consecutive layers of its kind (`layer_runs`).

Layer parameters are stacked on a leading `layers` axis and run with `lax.scan`
(with `config.remat`, through `remat_scan`: each layer recomputed in the backward
pass), so compile time does not grow with depth. Attention is
golfjax/models/attention.py's entry point (`config.attention`), whose memory is
linear in the sequence length.
With a KV cache (prefill and decode) the cache's form decides
(`ModelConfig.decode_layers`; golfjax/models/cache.py says why there are two):
a stacked cache runs the layers as one `lax.scan` body, as the training
forward does; a per-layer cache runs them unrolled, each over its own cache
buffers (what XLA's CPU backend runs fastest), and `split_layers` gives the
same params with per-layer weights for decode loops on CPU.
`logical_axes(config)` gives the same tree with each leaf's logical axis names, and
`param_shardings(config, mesh)` the NamedShardings the rules in golfjax/sharding.py
assign.

The forward pass (`hidden` and `unembed` split it in two, see below):

  logits_NxQxV, cache = apply(params, tokens_NxQ, positions_NxQ, attention_mask_NxS,
                              cache=None, *, config)

is pure and jit-friendly; `config` is a hashable frozen dataclass, so jit it as
`jax.jit(apply, static_argnames="config")` or `functools.partial(apply,
config=config)`. Mask semantics (N rows, Q new tokens, S key slots; letters of
golfjax/models/layers.py):

- without a cache, S = Q and `attention_mask_NxS` marks real tokens of the batch;
- with a cache, S = cache.max_length and the Q tokens occupy slots
  [cache.index, cache.index + Q) (see golfjax/models/cache.py);
- a query in slot q sees key slot s iff `attention_mask_NxS[b, s] and s <= q`.

`positions_NxQ` are RoPE positions only; for a left-padded row they count from its
first real token (e.g. `clip(cumsum(mask) - 1, 0)`). Rows/positions that are
padding produce finite garbage logits the caller masks out. Logits are float32.

`hidden_routed` also returns the MoE layers' `moe.Routing` (None for a dense
model) and takes the routing replay and the token mask of the load-balancing
statistics (golfjax/models/moe.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from golfjax import sharding as sharding_lib
from golfjax.models.cache import KVCache
from golfjax.models.config import ModelConfig
from golfjax.models.layers import Block, RMSNorm, _normal, _param, rope_sin_cos
from golfjax.models.moe import LayerRouting, Routing

Params = dict[str, Any]
# Names of the layer stacks in the params tree: the model's main layers, and
# an MoE model's dense ones.
STACKS = ("layers", "dense_layers")
# A routing replay: the recorded experts N x Q x L x A and where to use them.
Replay = tuple[jax.Array, jax.Array]


def layer_runs(config: ModelConfig) -> tuple[tuple[str, int, int, int], ...]:
    """(stack, start, stop, first layer) of each run of consecutive layers of
    one stack, in layer order: layers `first .. first + stop - start - 1`
    are the stack's entries [start, stop). One run for all but mixed MoE
    models."""
    sparse = set(config.moe_layers)
    runs: list[list[Any]] = []
    counts = {name: 0 for name in STACKS}
    for i in range(config.num_layers):
        stack = "dense_layers" if sparse and i not in sparse else "layers"
        if runs and runs[-1][0] == stack:
            runs[-1][2] += 1
        else:
            runs.append([stack, counts[stack], counts[stack] + 1, i])
        counts[stack] += 1
    return tuple(tuple(run) for run in runs)


def _layer_slots(config: ModelConfig) -> list[tuple[str, int]]:
    """(stack, index in it) of every layer, in order."""
    return [(stack, start + j) for stack, start, stop, _ in layer_runs(config)
            for j in range(stop - start)]


def _take(tree: Any, start: int, stop: int) -> Any:
    """Entries [start, stop) of every stacked array of `tree` (the arrays
    themselves when that is all of them: one run, as in every dense model)."""
    return jax.tree.map(lambda w: w if (start, stop) == (0, w.shape[0]) else w[start:stop],
                        tree)


class Embed(nnx.Module):

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(_normal, rngs.params(),
                                (config.vocab_size, config.embed_dim),
                                config.param_jnp_dtype, ("vocab", "embed"))


def _stack(config: ModelConfig, rngs: nnx.Rngs, count: int, sparse: bool) -> Block:
    """`count` Blocks (MoE ones if `sparse`), created under vmap so each
    parameter gains a leading `layers` axis (and that name in its metadata)."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs, sparse=sparse)

    return make_layers(rngs)


def _split_routing(y_NxQxD: jax.Array, routing: LayerRouting | None
                   ) -> tuple[jax.Array, jax.Array | None, Any]:
    """A layer's output, its routing's differentiable part and the rest
    (the form `remat_scan` takes)."""
    if routing is None:
        return y_NxQxD, None, None
    return y_NxQxD, routing.probs_E, (routing.ids_NxQxA, routing.counts_E)


def _routing(chunks: list[LayerRouting]) -> Routing | None:
    """The runs' stacked `LayerRouting`s (leading L axes) as one `Routing`."""
    if not chunks:
        return None
    ids_LxNxQxA, counts_LxE, probs_LxE = (
        jnp.concatenate([getattr(c, name) for c in chunks])
        for name in ("ids_NxQxA", "counts_E", "probs_E"))
    return Routing(ids_NxQxLxA=ids_LxNxQxA.transpose(1, 2, 0, 3), counts_LxE=counts_LxE,
                   probs_LxE=probs_LxE)


class Transformer(nnx.Module):
    """Token embedding, L scanned `Block`s, final RMSNorm and LM head."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = Embed(config, rngs=rngs)
        sparse = len(config.moe_layers)
        self.layers = _stack(config, rngs, sparse or config.num_layers, bool(sparse))
        if sparse and sparse < config.num_layers:
            self.dense_layers = _stack(config, rngs, config.num_layers - sparse, False)
        self.final_norm = RMSNorm(config.embed_dim, "embed", config)
        if not config.tie_embeddings:
            self.lm_head = _param(_normal, rngs.params(),
                                  (config.embed_dim, config.vocab_size),
                                  config.param_jnp_dtype, ("embed", "vocab"))

    def __call__(
        self,
        tokens_NxQ: jax.Array,
        positions_NxQ: jax.Array,
        attention_mask_NxS: jax.Array,
        cache: KVCache | None = None,
        layer_params: dict[str, tuple[Params, ...]] | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        x_NxQxD, new_cache = self.hidden(tokens_NxQ, positions_NxQ,
                                         attention_mask_NxS, cache, layer_params)
        return self.unembed(x_NxQxD), new_cache

    def hidden(
        self,
        tokens_NxQ: jax.Array,
        positions_NxQ: jax.Array,
        attention_mask_NxS: jax.Array,
        cache: KVCache | None = None,
        layer_params: dict[str, tuple[Params, ...]] | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states `x_NxQxD` (compute dtype) and the new cache."""
        x_NxQxD, new_cache, _ = self.routed(tokens_NxQ, positions_NxQ,
                                            attention_mask_NxS, cache, layer_params)
        return x_NxQxD, new_cache

    def routed(
        self,
        tokens_NxQ: jax.Array,
        positions_NxQ: jax.Array,
        attention_mask_NxS: jax.Array,
        cache: KVCache | None = None,
        layer_params: dict[str, tuple[Params, ...]] | None = None,
        *,
        token_mask_NxQ: jax.Array | None = None,
        replay: Replay | None = None,
    ) -> tuple[jax.Array, KVCache | None, Routing | None]:
        """`hidden`, and the MoE layers' routing (None for a dense model).

        `layer_params`: the stacks' weights as separate per-layer trees (from
        `split_layers`), used instead of this module's stacked ones; only with a
        cache. `token_mask_NxQ` weights the load-balancing statistics (default:
        the attention mask without a cache, every token with one); `replay`
        (without a cache) routes the MoE layers' tokens (golfjax/models/moe.py).
        """
        c = self.config
        dt = c.compute_jnp_dtype
        embedding_VxD = self.embed.embedding[...]
        x_NxQxD = jnp.take(embedding_VxD, tokens_NxQ, axis=0).astype(dt)
        sin_NxQxDh, cos_NxQxDh = rope_sin_cos(positions_NxQ, c)

        b, t = tokens_NxQ.shape
        s = t if cache is None else cache.max_length
        if attention_mask_NxS.shape != (b, s):
            raise ValueError(
                f"attention_mask_NxS has shape {attention_mask_NxS.shape}, expected "
                f"{(b, s)} (rows, {'tokens' if cache is None else 'cache slots'})")
        key_mask_NxS = attention_mask_NxS.astype(bool)
        if token_mask_NxQ is None and cache is None:
            token_mask_NxQ = key_mask_NxS
        stacks = {name: nnx.split(getattr(self, name))
                  for name in STACKS if hasattr(self, name)}
        if layer_params is not None and (cache is None or cache.stacked):
            raise ValueError("split layer params are for the cached (decode) path "
                             "with a per-layer cache")
        if replay is not None and cache is not None:
            raise ValueError("a routing replay is for the forward pass without a cache")
        if cache is not None and cache.stacked:
            x_NxQxD, new_cache, layers = self._hidden_scanned(
                x_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, cache, stacks,
                token_mask_NxQ)
        elif cache is not None:
            x_NxQxD, new_cache, layers = self._hidden_cached(
                x_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, cache, stacks,
                layer_params, token_mask_NxQ)
        else:
            x_NxQxD, layers = self._hidden_full(x_NxQxD, sin_NxQxDh, cos_NxQxDh,
                                                key_mask_NxS, stacks, token_mask_NxQ,
                                                replay)
            new_cache = None
        return self.final_norm(x_NxQxD), new_cache, _routing(layers)

    def _hidden_full(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        stacks: dict[str, tuple[nnx.GraphDef, nnx.State]],
        token_mask_NxQ: jax.Array | None,
        replay: Replay | None,
    ) -> tuple[jax.Array, list[LayerRouting]]:
        """The layers without a cache: one `lax.scan` (or `remat_scan`) per run."""
        replay_ids_LxNxQxA = None if replay is None else replay[0].transpose(2, 0, 1, 3)
        layers: list[LayerRouting] = []
        for name, start, stop, _ in layer_runs(self.config):
            graphdef, state = stacks[name]

            def run_layer(x: jax.Array, layer_state: Any, replay_ids: Any,
                          graphdef: nnx.GraphDef = graphdef
                          ) -> tuple[jax.Array, Any, Any]:
                block = nnx.merge(graphdef, layer_state)
                use = None if replay_ids is None else (replay_ids, replay[1])
                y, _, routing = block(x, sin_NxQxDh, cos_NxQxDh, key_mask_NxS,
                                      token_mask_NxQ=token_mask_NxQ, replay=use)
                return _split_routing(y, routing)

            run_state = _take(state, start, stop)
            run_replay = (None if replay_ids_LxNxQxA is None or name != "layers"
                          else replay_ids_LxNxQxA[start:stop])
            if self.config.remat:
                x_NxQxD, probs, rest = remat_scan(run_layer, x_NxQxD, run_state,
                                                  run_replay)
            else:
                def step(x: jax.Array, xs: Any, run_layer: Callable = run_layer
                         ) -> tuple[jax.Array, Any]:
                    y, probs, rest = run_layer(x, *xs)
                    return y, (probs, rest)

                x_NxQxD, (probs, rest) = jax.lax.scan(step, x_NxQxD,
                                                      (run_state, run_replay))
            if probs is not None:
                layers.append(LayerRouting(ids_NxQxA=rest[0], counts_E=rest[1],
                                           probs_E=probs))
        return x_NxQxD, layers

    def _hidden_cached(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        cache: KVCache,
        stacks: dict[str, tuple[nnx.GraphDef, nnx.State]],
        layer_params: dict[str, tuple[Params, ...]] | None,
        token_mask_NxQ: jax.Array | None,
    ) -> tuple[jax.Array, KVCache, list[LayerRouting]]:
        """The layers unrolled (a Python loop), each over its own cache buffers.

        For CPU: a scan needs the cache stacked over layers, and XLA's CPU
        backend copies a stacked cache slice by slice on every decode step
        (see golfjax/models/cache.py). Program size, and compile time, grow
        with depth on this path only; `_hidden_scanned` is the other.
        """
        write_index = cache.index.astype(jnp.int32)
        layer_caches, layers = [], []
        for i, (name, j) in enumerate(_layer_slots(self.config)):
            graphdef, state = stacks[name]
            if layer_params is None:
                layer_state = jax.tree.map(lambda w: w[j], state)
            else:
                layer_state = layer_params[name][j]
            block = nnx.merge(graphdef, layer_state)
            x_NxQxD, layer_cache, routing = block(
                x_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, cache.layer(i),
                write_index, token_mask_NxQ=token_mask_NxQ)
            layer_caches.append(layer_cache)
            if routing is not None:
                layers.append(jax.tree.map(lambda v: v[None], routing))
        t = x_NxQxD.shape[1]
        keys, values, recents = zip(*layer_caches)
        new_cache = cache.replace(k_NxKxDhxS=tuple(keys), v_NxKxSxDh=tuple(values),
                                  index=write_index + t)
        if cache.recent_v_NxKxWxDh is not None:
            new_cache = new_cache.replace(recent_k_NxKxDhxW=tuple(r[0] for r in recents),
                                          recent_v_NxKxWxDh=tuple(r[1] for r in recents))
        return x_NxQxD, new_cache, layers

    def _hidden_scanned(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        cache: KVCache,
        stacks: dict[str, tuple[nnx.GraphDef, nnx.State]],
        token_mask_NxQ: jax.Array | None,
    ) -> tuple[jax.Array, KVCache, list[LayerRouting]]:
        """The layers as one `lax.scan` (per run) over their weights and a
        stacked cache.

        Each layer reads its slice of the cache without writing it and
        returns the new tokens' keys and values (`Block.over_cache`); after
        the scan one dynamic-update-slice per stacked array writes every
        layer's Q new slots at `cache.index`, in place inside a decode loop on
        TPU and GPU. The program holds one layer body per run, whatever the
        depth.
        """
        write_index = cache.index.astype(jnp.int32)
        new_keys, new_values, layers = [], [], []
        for name, start, stop, first in layer_runs(self.config):
            graphdef, state = stacks[name]

            def run_layer(x_NxQxD: jax.Array, layer: tuple[Any, jax.Array, jax.Array],
                          graphdef: nnx.GraphDef = graphdef) -> tuple[jax.Array, Any]:
                layer_state, k_NxKxDhxS, v_NxKxSxDh = layer
                block = nnx.merge(graphdef, layer_state)
                y, new_kv, routing = block.over_cache(
                    x_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, k_NxKxDhxS,
                    v_NxKxSxDh, write_index)
                return y, (new_kv, routing)

            last = first + stop - start
            x_NxQxD, ((new_k_LxNxKxDhxQ, new_v_LxNxKxQxDh), routing) = jax.lax.scan(
                run_layer, x_NxQxD, (_take(state, start, stop),
                                     *_take((cache.k_LxNxKxDhxS, cache.v_LxNxKxSxDh),
                                            first, last)))
            new_keys.append(new_k_LxNxKxDhxQ)
            new_values.append(new_v_LxNxKxQxDh)
            if routing is not None:
                layers.append(routing)
        zero = jnp.zeros((), jnp.int32)
        t = x_NxQxD.shape[1]
        new_k_LxNxKxDhxQ, new_v_LxNxKxQxDh = (
            parts[0] if len(parts) == 1 else jnp.concatenate(parts)
            for parts in (new_keys, new_values))
        new_cache = cache.replace(
            k_LxNxKxDhxS=jax.lax.dynamic_update_slice(
                cache.k_LxNxKxDhxS, new_k_LxNxKxDhxQ, (zero,) * 4 + (write_index,)),
            v_LxNxKxSxDh=jax.lax.dynamic_update_slice(
                cache.v_LxNxKxSxDh, new_v_LxNxKxQxDh, (zero,) * 3 + (write_index, zero)),
            index=write_index + t)
        return x_NxQxD, new_cache, layers

    def unembed(self, x_NxQxD: jax.Array) -> jax.Array:
        """float32 logits of hidden states (any leading shape), via the LM head."""
        dt = self.config.compute_jnp_dtype
        x_NxQxD = x_NxQxD.astype(dt)
        if self.config.tie_embeddings:
            return jnp.einsum("...d,vd->...v", x_NxQxD,
                              self.embed.embedding[...].astype(dt),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", x_NxQxD, self.lm_head[...].astype(dt),
                          preferred_element_type=jnp.float32)


def _as_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def remat_scan(layer: Callable[[jax.Array, Any, Any], tuple[jax.Array, Any, Any]],
               x_NxQxD: jax.Array, layers_state: Any, consts: Any
               ) -> tuple[jax.Array, Any, Any]:
    """`layer` applied over the stacked layers, each recomputed in the backward pass.

    `layer(x, w, c) -> (x, aux, const_aux)` takes a layer's weights `w` (from
    `layers_state`) and its slice `c` of `consts` (arrays without a gradient,
    e.g. replayed routes; may be None); `aux` and `const_aux` are per-layer
    outputs, stacked, with and without a gradient (None for none).

    What `lax.scan` of a `jax.checkpoint`ed layer computes, with the saved
    layer inputs (the only residuals: L x N x Q x D) stored as raw bits and
    each layer's slice of inputs and weights passed through an optimization
    barrier before use. XLA's CPU backend computes bf16 ops in float32 and,
    under plain remat, hoists the converts of the loop-invariant stacks (every
    saved input, every layer weight) out of the backward loop: whole float32
    copies of them, which made the train step's temporary memory several GB
    larger. Integer bits and the barrier keep every convert on one layer.
    `layer` must close over no value that needs a gradient.
    """
    def step(x: jax.Array, xs: Any) -> tuple[jax.Array, Any]:
        y, aux, const_aux = layer(x, *xs)
        return y, (aux, const_aux)

    out, (aux, const_aux) = jax.lax.scan(step, x_NxQxD, (layers_state, consts))
    return out, aux, const_aux


def _remat_scan_fwd(layer: Callable[[jax.Array, Any, Any], tuple[jax.Array, Any, Any]],
                    x_NxQxD: jax.Array, layers_state: Any, consts: Any
                    ) -> tuple[tuple[jax.Array, Any, Any], tuple[jax.Array, Any, Any]]:
    def step(x: jax.Array, xs: Any) -> tuple[jax.Array, Any]:
        w, c = xs
        y, aux, const_aux = layer(x, jax.lax.optimization_barrier(w), c)
        return y, (aux, const_aux, _as_bits(x))

    out, (aux, const_aux, inputs_bits) = jax.lax.scan(step, x_NxQxD,
                                                      (layers_state, consts))
    return (out, aux, const_aux), (inputs_bits, layers_state, consts)


def _remat_scan_bwd(layer: Callable[[jax.Array, Any, Any], tuple[jax.Array, Any, Any]],
                    residuals: tuple[jax.Array, Any, Any],
                    cotangents: tuple[jax.Array, Any, Any]) -> tuple[jax.Array, Any, None]:
    inputs_bits, layers_state, consts = residuals
    dout_NxQxD, daux, _ = cotangents  # `const_aux` has no gradient.
    dtype = dout_NxQxD.dtype

    def step(dy: jax.Array, saved: tuple[Any, Any]) -> tuple[jax.Array, Any]:
        (bits, w, c), daux_layer = jax.lax.optimization_barrier(saved)
        x = jax.lax.bitcast_convert_type(bits, dtype)
        _, vjp = jax.vjp(lambda x, w: layer(x, w, c)[:2], x, w)
        return vjp((dy, daux_layer))

    dx, dlayers = jax.lax.scan(step, dout_NxQxD,
                               ((inputs_bits, layers_state, consts), daux), reverse=True)
    return dx, dlayers, None


remat_scan.defvjp(_remat_scan_fwd, _remat_scan_bwd)


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
    tokens_NxQ: jax.Array,
    positions_NxQ: jax.Array,
    attention_mask_NxS: jax.Array,
    cache: KVCache | None = None,
    *,
    config: ModelConfig,
) -> tuple[jax.Array, KVCache | None]:
    """Forward pass: float32 `logits_NxQxV` and the updated cache (None without one).

    Args:
      params: the params tree (see the module docstring).
      tokens_NxQ: int token ids.
      positions_NxQ: int RoPE positions of the tokens.
      attention_mask_NxS: bool/int, True for real tokens; S = Q without a cache,
        S = cache.max_length with one.
      cache: a `KVCache` from `init_cache`, or None for a plain forward pass.
      config: the model config (static under jit).
    """
    model, layer_params = _merge(params, config)
    return model(tokens_NxQ, positions_NxQ, attention_mask_NxS, cache,
                 layer_params)


def hidden(
    params: Params,
    tokens_NxQ: jax.Array,
    positions_NxQ: jax.Array,
    attention_mask_NxS: jax.Array,
    cache: KVCache | None = None,
    *,
    config: ModelConfig,
) -> tuple[jax.Array, KVCache | None]:
    """`apply` without the LM head: final-normed `h_NxQxD` (compute dtype), cache.

    With `unembed`, lets a caller compute logits a chunk of positions at a time
    (e.g. log-probs without materialising N x Q x V); `apply == unembed . hidden`.
    """
    model, layer_params = _merge(params, config)
    return model.hidden(tokens_NxQ, positions_NxQ, attention_mask_NxS, cache,
                        layer_params)


def hidden_routed(
    params: Params,
    tokens_NxQ: jax.Array,
    positions_NxQ: jax.Array,
    attention_mask_NxS: jax.Array,
    cache: KVCache | None = None,
    *,
    config: ModelConfig,
    token_mask_NxQ: jax.Array | None = None,
    replay: Replay | None = None,
) -> tuple[jax.Array, KVCache | None, Routing | None]:
    """`hidden`, and the MoE layers' `Routing` (None for a dense model).

    Args:
      token_mask_NxQ: the tokens the load-balancing statistics count
        (`Routing.counts_LxE`, `probs_LxE`); default: the attention mask
        without a cache, every token with one.
      replay: (ids_NxQxLxA, use_NxQ), without a cache only: the MoE layers
        route each token where `use_NxQ` is set to its recorded experts
        (golfjax/models/moe.py).
    """
    model, layer_params = _merge(params, config)
    return model.routed(tokens_NxQ, positions_NxQ, attention_mask_NxS, cache,
                        layer_params, token_mask_NxQ=token_mask_NxQ, replay=replay)


def unembed(params: Params, h_NxQxD: jax.Array, *,
            config: ModelConfig) -> jax.Array:
    """float32 logits `[..., V]` from `hidden`'s output (any leading dims)."""
    return _merge(params, config)[0].unembed(h_NxQxD)


def split_layers(params: Params) -> Params:
    """`params` with each layer stack as a tuple of per-layer trees (no `layers` axis).

    `apply` and `hidden` with a cache accept this form as well as the stacked
    one. It is for decode loops on CPU: there XLA materialises a layer's slice
    of a stacked weight every time the loop body uses it (a CPU matmul cannot
    read an operand at an offset into a larger buffer), which copies every
    layer weight once per generated token. Splitting before the loop copies
    them once, at the cost of a second copy of the layer weights while the
    split tree is alive.
    """
    def split(layers: Params) -> tuple[Params, ...]:
        num_layers = jax.tree.leaves(layers)[0].shape[0]
        return tuple(jax.tree.map(lambda w, i=i: w[i], layers) for i in range(num_layers))

    return {**params, **{name: split(params[name]) for name in STACKS if name in params}}


def _merge(params: Params, config: ModelConfig
           ) -> tuple[Transformer, dict[str, tuple[Params, ...]] | None]:
    """The module holding `params`, and the per-layer trees if they are split."""
    graphdef, state = _graphdef_and_abstract(config)
    if not isinstance(params["layers"], tuple):
        return nnx.merge(graphdef, params), None
    # The module's stacked layer variables are never read when per-layer
    # params are passed along; shape-only placeholders fill them.
    placeholders = nnx.to_pure_dict(state)
    stacks = {name: params[name] for name in STACKS if name in params}
    return nnx.merge(graphdef, {**params, **{name: placeholders[name] for name in stacks}}
                     ), stacks
