"""The programs a run executes, built from its config without weights or data.

`programs(cfg, devices)` builds the run's components as golfjax/components.py
does (its meshes, trainers and sampler configs), from the model's dims alone,
and returns every device program the run compiles, each ready to lower over
`devices` (a TPU slice's, golfjax/aot/slices.py, or any others):

  train step        `Trainer.jitted_step` on the run's batch layout: N =
                    prompts_per_step x group_size rows of the largest prompt
                    bucket (GOLF: a second part of refinement rows, whose
                    prompts take the bucket of golf.max_refinement_prompt_tokens)
                    and max_new_tokens response slots, train.micro_batches each
  log-probs         `Trainer.jitted_logprobs` per part, when the run rescores
                    old_logp (`train.recompute_old_logp`, synchronous) or
                    scores the KL reference
  rollout prefill,  the sampler's two programs for the rollout's bucket:
  rollout decode    min(prompts_per_step, prompts_per_call) prompts of the
                    largest prompt bucket (on the rollout worker's devices
                    when it has its own)
  rollout           asynchronous partial rollouts (`schedule.rollout_chunk_tokens`
  continuation ...  below the response length): the re-prefill of prompt +
                    partial response, one row a prompt, and a chunk's decode
  refinement ...    GOLF's refinement prompts, same sampler (the rollout's
                    programs when their prompts take the same bucket)
  judge ...         GOLF's model judge (golf.critic = "judge"), one sample
  eval ...          the evaluator's (eval.samples at eval.temperature)
  cold start step   the cold start's train step, when it has steps

Buckets smaller than these compile programs of the same form on smaller
arrays; the largest ones bound the memory.

Each program also names what the run keeps on the same devices while it
runs, besides the program's own arguments (`Program.held`, bytes per
device): the optimizer moments while the sampler runs (its arguments are
the parameters only), the rollout's other mini-batches on the device while
one trains, the asynchronous worker's parameter snapshots, and a KL
reference policy's parameters (`kl_reference_copies`).
"""

from __future__ import annotations

import dataclasses
import math
import types as pytypes
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax import decode as decode_lib
from golfjax import sharding
from golfjax import types
from golfjax.aot import work as work_lib
from golfjax.loops import partial_rollout
from golfjax.models import moe
from golfjax.models import transformer
from golfjax.models.config import ModelConfig
from golfjax.sampling import Sampler
from golfjax.train.trainer import Trainer

# The sampler's stop and pad ids come from the tokenizer; the programs do not
# depend on their values, so AOT needs no tokenizer (one stop id, pad 0).
_TOKENS = pytypes.SimpleNamespace(stop_ids=(0,), pad_id=0)


@dataclasses.dataclass(frozen=True)
class Program:
    """One device program of the run.

    Attributes:
      name: what it is ("train step", "rollout decode", ...).
      shapes: its shapes, in words.
      devices: "learner" or "rollout" (the asynchronous worker's own devices).
      lower: returns the program lowered over the devices (`jax.stages.Lowered`).
      held: bytes per device the run keeps there meanwhile, besides the
        program's arguments, by what they are.
      work: the estimated flops and bytes of one call per device (golfjax/aot/work.py).
    """

    name: str
    shapes: str
    devices: str
    lower: Callable[[], Any]
    held: dict[str, float]
    work: work_lib.Work


def kl_reference_copies(cfg: config_lib.RunConfig) -> int:
    """Copies of the parameters a KL reference policy keeps on the learner's
    devices: one (the frozen starting policy) when `train.kl_coef > 0`."""
    return 1 if cfg.train.kl_coef > 0 else 0


def device_bytes(tree: Any) -> float:
    """Bytes one device holds of a tree of placed `ShapeDtypeStruct`s (the
    largest shard of each leaf; an evenly split leaf's share)."""
    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(tree)))


def _placed(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _bucket(size: int, buckets: Sequence[int]) -> int:
    return next((b for b in buckets if b >= size), buckets[-1])


def _estimate_mesh(mesh: jax.sharding.Mesh) -> work_lib.Mesh:
    return work_lib.Mesh(mesh.size, sharding.row_shards(mesh), sharding.mesh_axis_size(mesh, "tensor"))


def _key() -> jax.ShapeDtypeStruct:
    return jax.eval_shape(lambda: jax.random.PRNGKey(0))


def _train_programs(name: str, trainer: Trainer, parts: list[tuple[int, int]], response: int,
                    micro_batches: int, held: dict[str, float], batches_held: int) -> Program:
    """The train step on `parts` [(rows, prompt)], with `batches_held` more such
    batches on the devices (the rollout's other mini-batches)."""
    row = trainer.batch_shardings.prompt_tokens_NxP
    routes = moe.route_spec(trainer.model_config)  # An MoE rollout's batches carry them.
    batches = tuple(types.abstract_batch(n, p, response, row, routes=routes) for n, p in parts)
    batch = batches[0] if len(batches) == 1 else batches
    replicated = jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec())
    key = jax.ShapeDtypeStruct(_key().shape, _key().dtype, sharding=replicated)
    layout = " + ".join(f"{n} rows, P {p}" for n, p in parts)
    return Program(
        name=name,
        shapes=f"{layout}; T {response}; {micro_batches} micro-batch{'es' * (micro_batches > 1)}",
        devices="learner",
        lower=lambda: trainer.jitted_step(batch).lower(trainer.abstract_state, batch, key),
        held={**held, "rollout's other batches": batches_held * device_bytes(batches)},
        work=work_lib.train_step(trainer.model_config, parts, response, micro_batches,
                                 _estimate_mesh(trainer.mesh)),
    )


def _sampler_programs(name: str, sampler: Sampler, prompts: int, prompt_len: int, devices: str,
                      held: dict[str, float]) -> list[Program]:
    """The prefill and decode programs of one `generate` call of `prompts` prompts."""
    cfg, config = sampler.cfg, sampler.model_config
    b = _bucket(prompts, cfg.batch_buckets)
    compiled = sampler.programs(b, prompt_len)
    params = transformer.abstract_params(config)
    tokens = jax.ShapeDtypeStruct((b, prompt_len), jnp.int32)
    mask = jax.ShapeDtypeStruct((b, prompt_len), jnp.bool_)
    valid = jax.ShapeDtypeStruct((b,), jnp.bool_)
    mesh = _estimate_mesh(sampler.mesh)
    rows = b * cfg.group_size

    def lower_decode() -> Any:
        cache, logits, routes = jax.eval_shape(compiled.prefill, params, tokens, mask)
        return compiled.decode.lower(params, cache, logits, tokens, mask, valid, _key(), routes)

    loops = len(decode_lib.decode_segments(prompt_len, cfg.max_new_tokens, cfg.decode_loops))
    return [
        Program(f"{name} prefill", f"{b} prompts, P {prompt_len}", devices,
                lambda: compiled.prefill.lower(params, tokens, mask), held,
                work_lib.prefill(config, b, prompt_len, mesh)),
        Program(f"{name} decode",
                f"{b} x {cfg.group_size} rows, P {prompt_len} + T {cfg.max_new_tokens}, {loops} loops",
                devices, lower_decode, held,
                work_lib.decode_program(config, rows, prompt_len, cfg.max_new_tokens,
                                        cfg.decode_loops, mesh)),
    ]


def model_config(cfg: config_lib.RunConfig) -> ModelConfig:
    """The policy's architecture and program settings, from dims alone."""
    return components_lib.architecture(cfg.model).replace(**cfg.model.overrides())


def programs(cfg: config_lib.RunConfig, devices: Sequence[Any]) -> list[Program]:
    """Every device program the run of `cfg` executes on `devices` (module docstring)."""
    config = model_config(cfg)
    mesh, worker_mesh = components_lib.meshes(cfg, devices)
    trainer, cold_trainer = components_lib.make_trainers(cfg, config, mesh)
    sampling = components_lib.sampling_config(cfg.sampling, _TOKENS, mesh)
    schedule = cfg.schedule

    # What the run keeps on the learner's devices besides a program's arguments.
    params = device_bytes(trainer.abstract_state.params)
    moments = device_bytes(trainer.abstract_state.opt_state)
    always = {"KL reference parameters": kl_reference_copies(cfg) * params}
    if schedule.async_rollout and worker_mesh is None:
        # The published snapshot and the one the worker samples with.
        always["parameter snapshots"] = 2 * params
    out: list[Program] = []

    buckets = cfg.sampling.prompt_buckets
    response = cfg.sampling.max_new_tokens
    n = cfg.train.prompts_per_step * cfg.sampling.group_size
    parts = [(n, buckets[-1])]
    if cfg.golf.enabled:
        parts.append((n, _bucket(cfg.golf.max_refinement_prompt_tokens, buckets)))
    # A synchronous rollout's k mini-batches are all on the devices while each trains.
    others = 0 if schedule.async_rollout else schedule.minibatches - 1
    out.append(_train_programs("train step", trainer, parts, response, cfg.train.micro_batches,
                               always, others))
    # The schedule's rescoring (the step computes the off-policy statistics itself).
    if cfg.train.recompute_old_logp or cfg.train.kl_coef > 0:
        row = trainer.batch_shardings.prompt_tokens_NxP
        routes = moe.route_spec(config)
        all_parts = device_bytes(tuple(types.abstract_batch(r, p, response, row, routes=routes)
                                       for r, p in parts))
        for r, p in sorted(set(parts)):
            part = types.abstract_batch(r, p, response, row, routes=routes)
            held = {**always, "optimizer moments": moments,
                    "rollout's batches": (others + 1) * all_parts - device_bytes(part)}
            out.append(Program("log-probs", f"{r} rows, P {p}; T {response}", "learner",
                               lambda part=part: trainer.jitted_logprobs.lower(trainer.abstract_state.params, part),
                               held, work_lib.logprobs(config, r, p, response, _estimate_mesh(mesh))))

    # Samplers: on the worker's own devices, or beside the learner's state.
    if worker_mesh is None:
        rollout_sampler, rollout_devices = Sampler(config, sampling, mesh), "learner"
        rollout_held = {**always, "optimizer moments": moments}
        if schedule.async_rollout:  # It samples with a snapshot; the learner's state lives on.
            rollout_held |= {"parameter snapshots": params, "learner parameters": params}
    else:
        worker_sampling = components_lib.sampling_config(cfg.sampling, _TOKENS, worker_mesh)
        rollout_sampler, rollout_devices = Sampler(config, worker_sampling, worker_mesh), "rollout"
        worker_params = device_bytes(_placed(transformer.abstract_params(config),
                                             transformer.param_shardings(config, worker_mesh)))
        rollout_held = {"the newer parameter snapshot": worker_params}
    cap = cfg.sampling.prompts_per_call or cfg.train.prompts_per_step
    prompts = min(cfg.train.prompts_per_step, cap)
    # GOLF's refinements take the rollout's programs when their bucket is the same.
    same = cfg.golf.enabled and parts[1][1] == buckets[-1]
    out += _sampler_programs("rollout + refinement" if same else "rollout", rollout_sampler, prompts,
                             buckets[-1], rollout_devices, rollout_held)
    chunk = schedule.rollout_chunk_tokens
    if schedule.async_rollout and schedule.partial_rollout and 0 < chunk < response:
        # Partial rollouts re-prefill each unfinished row's prompt + partial
        # response, one row a prompt (golfjax/loops/partial_rollout.py).
        continuation = Sampler(config, partial_rollout.continuation_config(rollout_sampler.cfg, chunk),
                               rollout_sampler.mesh)
        rows = min(prompts * cfg.sampling.group_size, continuation.cfg.batch_buckets[-1])
        out += _sampler_programs("rollout continuation", continuation, rows, buckets[-1] + response,
                                 rollout_devices, rollout_held)
    if cfg.golf.enabled:
        if not same:
            out += _sampler_programs("refinement", rollout_sampler, prompts, parts[1][1], rollout_devices,
                                     rollout_held)
        if cfg.golf.critic == "judge":
            judge = Sampler(config, sampling.replace(group_size=1), mesh)
            out += _sampler_programs("judge", judge, min(n, cap), buckets[-1], "learner",
                                     {**always, "optimizer moments": moments})
    evaluator = Sampler(config, components_lib.eval_sampling(cfg, sampling), mesh)
    out += _sampler_programs("eval", evaluator, min(prompts, cfg.eval.num_problems), buckets[-1],
                             "learner", {**always, "optimizer moments": moments})
    if cold_trainer is not None:
        out.append(_train_programs("cold start step", cold_trainer, [(cfg.cold_start.batch_size, buckets[-1])],
                                   response, 1, {}, 0))
    return out

