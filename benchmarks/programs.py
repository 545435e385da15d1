"""Compile-only views of the train step and the decode step, for any preset and shape.

Nothing here allocates the model or runs a step: programs are lowered from
abstract inputs (`jax.ShapeDtypeStruct`s) and compiled, and XLA's analyses of
the compiled program are read back. That makes the figures of a 16k-token
train step or a 512-row decode available on a CPU that could never run them:

- `temp_bytes`: `memory_analysis().temp_size_in_bytes`, the scratch memory
  the program needs besides its arguments and outputs (its peak working set).
- `bytes_accessed`: `cost_analysis()["bytes accessed"]`, XLA's count of bytes
  read and written by the program's operations (a loop body counts once).
- `flops`: `cost_analysis()["flops"]` (again a loop body once).

`train_step_program` compiles `Trainer.jitted_step` on a one-device mesh with
the step's real shardings and donation; `decode_step_program` compiles one
decode step (`golfjax.decode.decode_step`: a Q = 1 forward of every row, the
draw and the record) with the cache of the sampler's last decode loop, the
largest one, and the state donated, as the loop body runs. `decode_roofline`
is `sampling.decode_bytes_per_step` for that cache. `sampler_programs`
compiles the sampler's whole prefill and decode programs for one (batch,
prompt) bucket, the compilation a first `generate` call pays.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from golfjax import decode, sampling, sharding, types
from golfjax.models import cache as cache_lib
from golfjax.models import config as config_lib
from golfjax.models import moe
from golfjax.models import platform as platform_lib
from golfjax.models import transformer
from golfjax.config import TrainSection
from golfjax.losses import LossConfig
from golfjax.train import trainer as trainer_lib
from golfjax.train.state import OptimizerConfig


def stats(compiled: Any) -> dict[str, float]:
    """temp/argument/output bytes, bytes accessed and flops of a compiled program."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    return {
        "temp_bytes": float(memory.temp_size_in_bytes),
        "argument_bytes": float(memory.argument_size_in_bytes),
        "output_bytes": float(memory.output_size_in_bytes),
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "flops": float(cost.get("flops", float("nan"))),
    }


def model_config(preset: str, **overrides: Any) -> config_lib.ModelConfig:
    """A preset with overrides (e.g. remat, compute_dtype, attention)."""
    return config_lib.get_preset(preset).replace(**overrides)


def abstract_batch(rows: int, prompt: int, response: int,
                   sharding_of: Any = None, *,
                   routes: config_lib.ModelConfig | None = None) -> types.Batch:
    """A `Batch` of `ShapeDtypeStruct`s: N rows, P prompt and T response slots,
    with the recorded routes of an MoE model's rollout if `routes` is one."""
    return types.abstract_batch(rows, prompt, response, sharding_of,
                                routes=None if routes is None else moe.route_spec(routes))


def train_step_program(config: config_lib.ModelConfig, rows: int, prompt: int,
                       response: int, *, logp_chunk: int = 128
                       ) -> tuple[Any, dict[str, float]]:
    """The compiled train step (ppo_clip, one micro-batch) and its `stats`.

    An MoE model's batch carries its rollout's routes, as the RL loop's does.
    Stats also hold `compile_s` (lower + compile wall seconds).
    """
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = trainer_lib.Trainer(
        config, TrainSection(loss="ppo_clip", logp_chunk=logp_chunk), LossConfig(),
        OptimizerConfig(lr=1e-5), mesh)
    batch = abstract_batch(rows, prompt, response,
                           trainer.batch_shardings.prompt_tokens_NxP,
                           routes=config if config.moe_layers else None)
    start = time.perf_counter()
    compiled = trainer.jitted_step(batch).lower(
        trainer.abstract_state, batch, jax.random.key(0)).compile()
    return compiled, dict(stats(compiled), compile_s=time.perf_counter() - start)


def decode_step_program(config: config_lib.ModelConfig, rows: int, prompt: int,
                        new_tokens: int, *, decode_loops: int | None = None,
                        platform: str | None = None, device: Any = None
                        ) -> tuple[Any, dict[str, float]]:
    """One compiled decode step at the sampler's last loop, and its `stats`.

    Stats also hold `compile_s`, the cache's `slots`, and `roofline_bytes`
    (`sampling.decode_bytes_per_step` at those slots) with
    `bytes_per_roofline`. The step takes the sampler's per-platform choices:
    `config.decode_layers` resolved for the platform (scanned layers over a
    stacked cache, or unrolled ones), and with unrolled layers on CPU
    per-layer weights and a recent buffer. `device` compiles it for that
    device (e.g. a TPU chip of `golfjax.aot.slices`), whose platform it takes;
    default: the default device.
    """
    cfg = sampling.SamplingConfig(max_new_tokens=new_tokens)
    if decode_loops is not None:
        cfg = cfg.replace(decode_loops=decode_loops)
    platform = device.platform if device is not None else platform or jax.default_backend()
    config = config.replace(
        decode_layers=config_lib.resolve_decode_layers(config, platform))
    stacked = config.decode_layers == "scan"
    cpu = platform == "cpu" and not stacked  # Per-layer weights, recent buffer.
    params = transformer.abstract_params(config)
    if cpu:
        params = jax.eval_shape(transformer.split_layers, params)
    main, slots, _ = decode.loop_caches(prompt, new_tokens, cfg.decode_loops)[-1]

    def make_state() -> decode.DecodeState:
        cache = cache_lib.init_cache(config, rows, main if cpu else slots,
                                     stacked=stacked)
        if cpu:
            cache = cache_lib.with_recent(cache, slots - main)
        routes = None  # An MoE model's step records its routes, as the sampler's.
        if config.moe_layers:
            routes = jnp.zeros((rows, new_tokens, len(config.moe_layers),
                                config.experts_per_token),
                               moe.route_dtype(config.num_experts))
        return decode.DecodeState(
            step=jnp.zeros((), jnp.int32), last_N=jnp.zeros((rows,), jnp.int32),
            cache=cache, done_N=jnp.zeros((rows,), bool),
            stopped_N=jnp.zeros((rows,), bool),
            tokens_NxT=jnp.zeros((rows, new_tokens), jnp.int32),
            mask_NxT=jnp.zeros((rows, new_tokens), bool),
            logp_NxT=jnp.zeros((rows, new_tokens), jnp.float32),
            routes_NxTxLxA=routes)

    def step(params: Any, state: decode.DecodeState, mask_NxS: jax.Array,
             first_position_N: jax.Array, key: jax.Array) -> decode.DecodeState:
        with platform_lib.compiling_for(platform):
            return decode.decode_step(params, state, mask_NxS=mask_NxS,
                                      first_position_N=first_position_N, key=key,
                                      model_config=config, cfg=cfg)

    placed = None if device is None else jax.sharding.SingleDeviceSharding(device)

    def place(tree: Any) -> Any:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed), tree)

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=1).lower(*place((
        params, jax.eval_shape(make_state), jax.ShapeDtypeStruct((rows, slots), bool),
        jax.ShapeDtypeStruct((rows,), jnp.int32), jax.eval_shape(lambda: jax.random.key(0))))).compile()
    out = dict(stats(compiled), compile_s=time.perf_counter() - start, slots=slots,
               decode_layers=config.decode_layers)
    out["roofline_bytes"] = float(sampling.decode_bytes_per_step(config, rows, slots))
    out["bytes_per_roofline"] = out["bytes_accessed"] / out["roofline_bytes"]
    return compiled, out


def sampler_programs(config: config_lib.ModelConfig, batch: int, group: int,
                     prompt: int, new_tokens: int, *, decode_loops: int | None = None
                     ) -> dict[str, Any]:
    """Lower + compile seconds of the sampler's prefill and decode programs.

    The programs of `sampling.Sampler` for `batch` prompts of `prompt` tokens,
    `group` samples each and `new_tokens` new tokens, compiled from abstract
    inputs on the default device (nothing is allocated or run): what the
    first `generate` call of that bucket compiles, with
    `config.decode_layers` resolved by the Sampler for this platform.
    """
    cfg = sampling.SamplingConfig(
        max_new_tokens=new_tokens, group_size=group, prompt_buckets=(prompt,),
        batch_buckets=(batch,))
    if decode_loops is not None:
        cfg = cfg.replace(decode_loops=decode_loops)
    sampler = sampling.Sampler(config, cfg)
    programs = sampler.programs(batch, prompt)
    params = transformer.abstract_params(config)
    tokens = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, prompt), jnp.bool_)
    valid = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    key = jax.eval_shape(lambda: jax.random.key(0))
    out: dict[str, Any] = {
        "decode_layers": config_lib.resolve_decode_layers(config, jax.default_backend()),
        "decode_loops": len(decode.decode_segments(prompt, new_tokens, cfg.decode_loops))}
    start = time.perf_counter()
    programs.prefill.lower(params, tokens, mask).compile()
    out["prefill_compile_s"] = time.perf_counter() - start
    cache, logits, routes = jax.eval_shape(programs.prefill, params, tokens, mask)
    start = time.perf_counter()
    programs.decode.lower(params, cache, logits, tokens, mask, valid, key, routes).compile()
    out["decode_compile_s"] = time.perf_counter() - start
    return out
