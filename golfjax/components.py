"""`build(cfg, workdir) -> (Components, params)`: every object a run needs, built once from a `RunConfig`.

Each component takes its config section as it is; the values derived from
several sections (the sampler's stop ids, pad id and batch buckets, the
learner's and the rollout worker's devices) are computed here and nowhere
else. golfjax/train_loop.py trains over the frozen `Components`.

Where a newcomer looks:
  batch of GRPO groups        golfjax/loops/rl.py      `GroupSource`
  batch of GOLF               golfjax/loops/golf.py    `GolfSource`
  rollout schedule            golfjax/loops/schedule.py `RolloutSchedule`
  the loss                    `train.loss`, a key of `golfjax.losses.LOSSES`
  the cold start              golfjax/loops/cold_start.py `ColdStart`

The start of RL. The cold start trains with its own optimizer (`cold_start.lr`)
on the supervised loss; RL then starts with fresh Adam moments, and the RL
optimizer's learning rate rises linearly from 0 over `optimizer.warmup_steps`
RL steps (the schedule counts the RL optimizer's own updates). Adam's first
updates have a size of about the learning rate in every coordinate whatever
the gradient's scale, so a warmup is what keeps the first RL steps from
undoing the cold start; carrying the cold start's moments into RL instead
would scale RL's updates by the supervised loss's gradient statistics for
about 1 / (1 - b2) steps, which are those of another objective.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from golfjax import config as config_lib
from golfjax import feedback as critics_lib
from golfjax import process_groups as groups
from golfjax import sharding
from golfjax.data.iterator import EpochIterator
from golfjax.loops import cold_start as cold_start_lib
from golfjax.loops import golf as golf_lib
from golfjax.loops import rl as rl_lib
from golfjax.loops import async_rollout
from golfjax.loops import rollout_worker
from golfjax.loops import schedule as schedule_lib
from golfjax.losses import LossConfig
from golfjax.losses import reduce
from golfjax.models import config as model_config_lib
from golfjax.models import hf
from golfjax.models import transformer
from golfjax.parallel import remote
from golfjax.rewards import make_task
from golfjax.rewards.base import Problem
from golfjax.rewards.base import Task
from golfjax.sampling import Sampler
from golfjax.sampling import SamplingConfig
from golfjax.tokenizer import Tokenizer
from golfjax.tokenizer import load_tokenizer
from golfjax.train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class Components:
    """A run's built objects (see the module docstring).

    Attributes:
      cfg: the run's config.
      mesh: the learner's mesh.
      model_config: the policy's architecture.
      tokenizer, task: the task's tokenizer and its verifier/problem source.
      train_problems, test_problems: the RL split and the evaluated split.
      trainer: RL's jitted step; `cold_start_trainer` the cold start's (or None).
      source: the batch source (`GroupSource` or `GolfSource`).
      schedule: the rollout schedule that turns the source's batches into steps;
        with a KL term it holds the frozen reference parameters from RL's start
        (`schedule.reference`, one more copy of the policy's; golfjax/train/reference.py).
      evaluator: held-out accuracy and pass@k.
      cold_start: the cold start's batches (None without one).
    """

    cfg: config_lib.RunConfig
    mesh: jax.sharding.Mesh
    model_config: model_config_lib.ModelConfig
    tokenizer: Tokenizer
    task: Task
    train_problems: list[Problem]
    test_problems: list[Problem]
    trainer: Trainer
    cold_start_trainer: Trainer | None
    source: rl_lib.GroupSource | golf_lib.GolfSource
    schedule: schedule_lib.RolloutSchedule  # Or its asynchronous subclass.
    evaluator: rl_lib.Evaluator
    cold_start: cold_start_lib.ColdStart | None

    def rl_data(self) -> Any:
        """The iterator of RL's prompts: the grain pipeline of `task.dataset`, or
        an epoch iterator over the train split; its state is checkpointed."""
        cfg = self.cfg
        if not cfg.task.dataset:
            return EpochIterator(len(self.train_problems), cfg.train.prompts_per_step, cfg.seed + 1)
        from golfjax.data.pipeline import PromptPipeline  # grain: only dataset runs need it.

        # Prompts longer than the largest prompt bucket could not be sampled;
        # they are dropped (and counted) here rather than failing mid-run.
        # Each process reads its own shard; the positions are all-gathered so
        # every process holds the same global batch (golfjax/sharding.py).
        return PromptPipeline(
            self.train_problems, self.tokenizer,
            batch_size=cfg.train.prompts_per_step // groups.process_count(),
            seed=cfg.seed + 1, max_prompt_tokens=max(cfg.sampling.prompt_buckets),
            template_kwargs=cfg.task.template_kwargs, gather=True,
        )


def make_tokenizer(cfg: config_lib.RunConfig, workdir: str, vocab_size: int | None) -> Tokenizer:
    if cfg.task.tokenizer == "builtin":
        from golfjax.data.char_tokenizer import make_task_tokenizer

        tokenizer = make_task_tokenizer(os.path.join(workdir, "tokenizer"))
        if vocab_size is not None and tokenizer.vocab_size > vocab_size:
            raise ValueError(
                f"config.task.tokenizer: the built-in tokenizer has {tokenizer.vocab_size} ids but"
                f" model {cfg.model.preset!r} embeds only {vocab_size}"
            )
        return tokenizer
    return load_tokenizer(cfg.task.tokenizer, vocab_size=vocab_size)


def architecture(section: config_lib.ModelSection) -> model_config_lib.ModelConfig:
    """The policy's dims without its weights: `hf_path`'s or `hf_config`'s
    config.json, or the preset, with `dims` replacing fields."""
    path = os.path.join(section.hf_path, "config.json") if section.hf_path else section.hf_config
    if not path:
        return model_config_lib.get_preset(section.preset).replace(**section.dims)
    with open(path, encoding="utf-8") as f:
        return hf.config_from_hf(json.load(f)).replace(**section.dims)


def make_model(cfg: config_lib.RunConfig, mesh: Any) -> tuple[model_config_lib.ModelConfig, Any]:
    if cfg.model.hf_path:
        model_config, params = hf.load(cfg.model.hf_path, mesh=mesh)
    else:
        model_config = architecture(cfg.model)
        params = transformer.init_params(model_config, jax.random.PRNGKey(cfg.seed), mesh)
    # Remat, attention and chunking change the program, not the parameters.
    return model_config.replace(**cfg.model.overrides()), params


def sampling_config(cfg: config_lib.SamplingSection, tokenizer: Tokenizer, mesh: Any) -> SamplingConfig:
    """The sampler's config: the `sampling` section, plus the tokenizer's stop and
    pad ids and prompt-count buckets that split over the mesh's row shards (up
    to `prompts_per_call`, rounded up to a multiple of the shards)."""
    shards = sharding.row_shards(mesh)
    fields = dataclasses.asdict(cfg)
    cap = fields.pop("prompts_per_call")
    buckets = tuple(shards * 2**i for i in range(12))
    if cap:
        buckets = tuple(b for b in buckets if b < cap) + (-(-cap // shards) * shards,)
    return SamplingConfig(**fields, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                          batch_buckets=buckets)


def _source(
    cfg: config_lib.RunConfig, sampler: Sampler, task: Task, tokenizer: Tokenizer,
    model_config: model_config_lib.ModelConfig, mesh: Any,
) -> rl_lib.GroupSource | golf_lib.GolfSource:
    groups = rl_lib.GroupSource(
        sampler, task, tokenizer, rl_lib.advantage_fn(cfg.train.advantage), dict(cfg.task.template_kwargs))
    if not cfg.golf.enabled:
        return groups
    if (cfg.golf.critic or task.default_critic) == "judge":
        judge_cfg = sampling_config(cfg.sampling, tokenizer, mesh).replace(group_size=1)
        judge = golf_lib.decode_generate(Sampler(model_config, judge_cfg, mesh), tokenizer)
        return golf_lib.GolfSource(cfg.golf, groups, judge=judge)
    return golf_lib.GolfSource(cfg.golf, groups, critic=critics_lib.make_critic(cfg.golf.critic or None, task))


def meshes(cfg: config_lib.RunConfig, devices: Any = None) -> tuple[jax.sharding.Mesh, jax.sharding.Mesh | None]:
    """The learner's mesh, and the rollout worker's when it samples on devices
    of its own (`schedule.rollout_devices`), over `devices` (default: all)."""
    devices = groups.devices() if devices is None else devices  # This process's group's.
    learner_devices, worker_devices = rollout_worker.split_devices(cfg.schedule, devices)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=learner_devices)
    if worker_devices is None:
        return mesh, None
    return mesh, sharding.make_mesh(1, -1, cfg.mesh.tensor, devices=worker_devices)


def make_trainers(cfg: config_lib.RunConfig, model_config: model_config_lib.ModelConfig,
                  mesh: jax.sharding.Mesh) -> tuple[Trainer, Trainer | None]:
    """RL's trainer, and the cold start's (None without a cold start)."""
    trainer = Trainer(model_config, cfg.train, cfg.loss, cfg.rl_optimizer, mesh,
                      temperature=cfg.sampling.temperature,
                      part_names=golf_lib.PART_NAMES if cfg.golf.enabled else ())
    if not cfg.cold_start.steps:
        return trainer, None
    # Its own optimizer: the cold start's learning rate, no warmup, and
    # moments that RL does not inherit (module docstring).
    return trainer, Trainer(model_config, cold_start_lib.ColdStart.train_section(cfg.train),
                            LossConfig(agg=reduce.TOKEN_MEAN), cfg.cold_start_optimizer, mesh)


def eval_sampling(cfg: config_lib.RunConfig, sampling: SamplingConfig) -> SamplingConfig:
    """The evaluator's sampler config: `eval.samples` per problem at `eval.temperature`."""
    return sampling.replace(group_size=cfg.eval.samples, temperature=cfg.eval.temperature)


def build(cfg: config_lib.RunConfig, workdir: str) -> tuple[Components, Any]:
    """Every component of the run described by a validated `cfg`, and the
    policy's starting parameters (kept apart, so that the caller can drop them
    once the train state holds them)."""
    mesh, worker_mesh = meshes(cfg)
    model_config, params = make_model(cfg, mesh)
    tokenizer = make_tokenizer(cfg, workdir, model_config.vocab_size)
    task = make_task(cfg.task.name, **cfg.task.task_kwargs())
    train_problems = list(task.load("train"))
    all_test = list(task.load("test"))
    for split, problems in (("train", train_problems), ("test", all_test)):
        if not problems:
            raise ValueError(f"config.task: task {cfg.task.name!r} with kwargs {cfg.task.task_kwargs()}"
                             f" has an empty {split} split")
    test_problems = all_test[: cfg.eval.num_problems]

    trainer, cold_start_trainer = make_trainers(cfg, model_config, mesh)
    sampling = sampling_config(cfg.sampling, tokenizer, mesh)
    source = _source(cfg, Sampler(model_config, sampling, mesh), task, tokenizer, model_config, mesh)

    worker_source = None
    if worker_mesh is not None:
        worker_sampler = Sampler(model_config, sampling_config(cfg.sampling, tokenizer, worker_mesh), worker_mesh)
        worker_source = source.with_sampler(worker_sampler)
    schedule_args = dict(trainer=trainer, source=source, problems=train_problems,
                         recompute_old_logp=cfg.train.recompute_old_logp)
    if cfg.schedule.rollout_processes:  # The rollout group is other processes (golfjax/parallel/).
        schedule = remote.RemoteRolloutSchedule(
            cfg.schedule, **schedule_args, key=jax.random.PRNGKey(cfg.seed), channel=remote.make_channel(cfg, params))
    elif cfg.schedule.async_rollout:
        schedule = async_rollout.AsyncRolloutSchedule(
            cfg.schedule, **schedule_args, key=jax.random.PRNGKey(cfg.seed), worker_source=worker_source,
            worker_mesh=worker_mesh)
    else:
        schedule = schedule_lib.RolloutSchedule(cfg.schedule, **schedule_args)
    evaluator = rl_lib.Evaluator(
        Sampler(model_config, eval_sampling(cfg, sampling), mesh),
        test_problems, task, tokenizer, batch_size=cfg.train.prompts_per_step,
        template_kwargs=dict(cfg.task.template_kwargs),
    )

    cold_start = None
    if cfg.cold_start.steps:
        cold_start = cold_start_lib.make_cold_start(cfg, tokenizer, {p.question for p in all_test})
    return Components(
        cfg=cfg, mesh=mesh, model_config=model_config, tokenizer=tokenizer,
        task=task, train_problems=train_problems, test_problems=test_problems, trainer=trainer,
        cold_start_trainer=cold_start_trainer, source=source, schedule=schedule, evaluator=evaluator,
        cold_start=cold_start,
    ), params
