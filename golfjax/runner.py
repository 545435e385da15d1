"""`run(config, workdir)`: config -> objects -> loop, with checkpoints and metrics.

The work directory is the identity of a run:

    workdir/
      checkpoints/<step>/   Orbax: train state, data position, config
      metrics.jsonl         one JSON record per logged step
      tensorboard/          event files
      tokenizer/            the built-in task tokenizer, when used

Starting a run in a directory that holds a checkpoint resumes it exactly (same
parameters, optimizer moments, data order and sampling keys); starting it with
a config that differs from the saved one stops with an error naming every
differing key. SIGTERM (preemption) saves a checkpoint and returns cleanly.

Phases: an optional supervised cold start (`cold_start.steps` steps on the
task's reference solutions), then `train.steps` RL steps. Step numbers are
global: RL step s is `cold_start.steps + s`. Every `eval.every` RL steps (and
before the first and after the last) the policy is evaluated on the held-out
split.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.data import cold_start as data_cold_start
from golfjax.data.iterator import EpochIterator
from golfjax import feedback as critics_lib
from golfjax.feedback import refinement as refinement_lib
from golfjax.loops import cold_start as cold_start_lib
from golfjax.loops import golf as golf_lib
from golfjax.loops import rl as rl_lib
from golfjax.loops import vespo as vespo_lib
from golfjax.models import config as model_config_lib
from golfjax.models import hf
from golfjax.models import transformer
from golfjax.rewards import make_task
from golfjax.rewards.base import Problem, Task
from golfjax.sampling import Sampler
from golfjax.sampling import SamplingConfig
from golfjax.tokenizer import Tokenizer
from golfjax.tokenizer import load_tokenizer
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import interrupts as interrupts_lib
from golfjax.train import nonfinite as nonfinite_lib
from golfjax.train import state as state_lib
from golfjax.train import step as step_lib
from golfjax.train import workdir as workdir_lib
from golfjax.train.trainer import Trainer


def _preemption_flag() -> contextlib.AbstractContextManager[interrupts_lib.StopRequest]:
    """A stop request set by SIGTERM or Ctrl-C while the run is inside this
    block (golfjax/train/interrupts.py: a second Ctrl-C interrupts at once)."""
    return interrupts_lib.graceful()


def _tokenizer(cfg: config_lib.RunConfig, workdir: str, vocab_size: int | None) -> Tokenizer:
    if cfg.task.tokenizer == "builtin":
        from golfjax.data.char_tokenizer import make_task_tokenizer

        tokenizer = make_task_tokenizer(os.path.join(workdir, "tokenizer"))
        if vocab_size is not None and tokenizer.vocab_size > vocab_size:
            raise ValueError(
                f"the built-in tokenizer has {tokenizer.vocab_size} ids but model"
                f" {cfg.model.preset!r} embeds only {vocab_size}"
            )
        return tokenizer
    return load_tokenizer(cfg.task.tokenizer, vocab_size=vocab_size)


def _model(cfg: config_lib.RunConfig, mesh: Any) -> tuple[model_config_lib.ModelConfig, Any]:
    if cfg.model.hf_path:
        model_config, params = hf.load(cfg.model.hf_path, mesh=mesh)
    else:
        model_config = model_config_lib.get_preset(cfg.model.preset)
        params = transformer.init_params(model_config, jax.random.PRNGKey(cfg.seed), mesh)
    if cfg.model.remat:  # Remat changes the program, not the parameters.
        model_config = model_config.replace(remat=True)
    return model_config, params


class Run:
    """Everything a run needs, built once from a `RunConfig`."""

    def __init__(self, cfg: config_lib.RunConfig, workdir: str) -> None:
        self.cfg = cfg
        self.workdir = workdir
        # VESPO's asynchronous worker may sample on devices of its own.
        learner_devices, rollout_devices = vespo_lib.split_devices(cfg.vespo)
        self.mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=learner_devices)
        self.model_config, params = _model(cfg, self.mesh)
        self.tokenizer = _tokenizer(cfg, workdir, self.model_config.vocab_size)
        self.task = make_task(cfg.task.name, **cfg.task.task_kwargs())
        self.train_problems = list(self.task.load("train"))
        self.test_problems = list(self.task.load("test"))[: cfg.eval.num_problems]
        if not self.train_problems or not self.test_problems:
            raise ValueError(f"task {cfg.task.name!r} has an empty train or test split")
        self.template_kwargs: dict[str, Any] = {}

        step_cfg = step_lib.StepConfig(
            loss=cfg.train.loss,
            loss_cfg=cfg.loss,
            off_policy_loss=cfg.train.off_policy_loss,
            # Greedy rollouts (temperature 0) are scored at temperature 1.
            temperature=cfg.sampling.temperature or 1.0,
            kl_coef=cfg.train.kl_coef,
            kl_estimator=cfg.train.kl_estimator,
            entropy_coef=cfg.train.entropy_coef,
            micro_batches=cfg.train.micro_batches,
            logp_chunk=cfg.train.logp_chunk,
            use_sampler_logp=cfg.loss.tis or cfg.loss.mis != "none",
            nonfinite=cfg.train.nonfinite,
        )
        self.trainer = Trainer(self.model_config, step_cfg, cfg.optimizer, self.mesh)
        self.sft_trainer = None
        if cfg.cold_start.steps:
            sft_opt = state_lib.OptimizerConfig(
                lr=cfg.cold_start.lr,
                weight_decay=cfg.optimizer.weight_decay,
                grad_clip=cfg.optimizer.grad_clip,
            )
            self.sft_trainer = Trainer(
                self.model_config,
                step_lib.StepConfig(loss="reinforce", logp_chunk=cfg.train.logp_chunk),
                sft_opt,
                self.mesh,
            )
        # Rows are split over data x fsdp: every batch must divide evenly.
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = {
            "train.prompts_per_step * sampling.group_size": cfg.train.prompts_per_step * cfg.sampling.group_size,
            "cold_start.batch_size": cfg.cold_start.batch_size if cfg.cold_start.steps else shards,
        }
        for name, value in rows.items():
            if value % shards:
                raise ValueError(
                    f"{name} = {value} rows do not split over the mesh's {shards} data x fsdp devices"
                )
        stop_ids = self.tokenizer.stop_ids
        sampling = SamplingConfig(
            temperature=cfg.sampling.temperature,
            top_p=cfg.sampling.top_p,
            top_k=cfg.sampling.top_k,
            max_new_tokens=cfg.sampling.max_new_tokens,
            stop_ids=stop_ids,
            group_size=cfg.sampling.group_size,
            prompt_buckets=cfg.sampling.prompt_buckets,
            batch_buckets=tuple(shards * 2**i for i in range(12)),
            pad_id=self.tokenizer.pad_id,
            decode_loops=cfg.sampling.decode_loops,
        )
        self.sampler = Sampler(self.model_config, sampling, self.mesh)
        self.eval_sampler = Sampler(
            self.model_config,
            sampling.replace(group_size=cfg.eval.samples, temperature=cfg.eval.temperature),
            self.mesh,
        )
        self.advantage_fn = rl_lib.advantage_fn(cfg.train.advantage)
        self.golf = None
        if cfg.golf.enabled:
            judge = None
            if (cfg.golf.critic or self.task.default_critic) == "judge":
                judge_sampler = Sampler(self.model_config, sampling.replace(group_size=1), self.mesh)
                judge = golf_lib.decode_generate(judge_sampler, self.tokenizer)
            self.golf = golf_lib.make_golf(
                cfg.golf, self.task, self.tokenizer, self.template_kwargs, judge_generate=judge
            )
        self.cold_task = None
        if cfg.cold_start.steps:
            held_out = {p.question for p in self.task.load("test")}
            cold_kwargs = {**cfg.task.task_kwargs(), **cfg.cold_start.task_kwargs}
            self.cold_task = make_task(cfg.task.name, **cold_kwargs)
            self.cold_problems = self._sft_problems(self.cold_task, held_out, "cold_start.task_kwargs")
            self.refine_task, self.refine_problems, self.refine_critic = self.cold_task, self.cold_problems, None
            if cfg.cold_start.refines:
                if cfg.cold_start.refine_task_kwargs:
                    self.refine_task = make_task(
                        cfg.task.name, **{**cold_kwargs, **cfg.cold_start.refine_task_kwargs})
                    self.refine_problems = self._sft_problems(
                        self.refine_task, held_out, "cold_start.refine_task_kwargs")
                # Critiques of the refinement batches' synthetic failed attempts.
                self.refine_critic = critics_lib.make_critic(cfg.golf.critic or None, self.refine_task)
        self.initial_params = params
        self.rng = jax.random.PRNGKey(cfg.seed)
        self.vespo = None
        if cfg.vespo.enabled:
            self.vespo = vespo_lib.VespoLoop(
                cfg, trainer=self.trainer, build_batch=self.build_batch, problems=self.train_problems,
                sampler=self.sampler, rng=self.rng, rollout_devices=rollout_devices,
            )

    def _sft_problems(self, task: Task, held_out: set[str], key: str) -> list[Problem]:
        """`task`'s train problems with a reference solution, less any held-out
        RL problem (its question in `held_out`): a split drawn with other
        kwargs may hold some, and the cold start must not train on the
        evaluation."""
        problems = [p for p in task.load("train") if p.solution and p.question not in held_out]
        if len(problems) < self.cfg.cold_start.batch_size:
            raise ValueError(
                f"{key}: task {self.cfg.task.name!r} gives {len(problems)} train problems with a"
                f" reference solution and not held out, fewer than cold_start.batch_size ="
                f" {self.cfg.cold_start.batch_size}")
        return problems

    # ---------------------------------------------------------------- phases

    def cold_start_step(
        self, state: state_lib.TrainState, data: EpochIterator, step: int
    ) -> tuple[Any, dict]:
        cfg = self.cfg
        # A batch is all plain or all refinement examples (ColdStartSection:
        # is_refine_step): plain prompts are several times shorter, and a mixed
        # batch would pad them to the refinement bucket.
        refine = cfg.cold_start.is_refine_step(cfg.seed, step)
        if refine:
            # Refinement batches draw their problems from seed and step too (no
            # iterator state: a resumed run draws the same ones).
            rows = np.random.default_rng([cfg.seed, step, 1]).choice(
                len(self.refine_problems), cfg.cold_start.batch_size, replace=False)
            task, critic = self.refine_task, self.refine_critic
            problems = [self.refine_problems[i] for i in rows]
        else:
            task, critic = self.cold_task, None
            problems = [self.cold_problems[i] for i in data.next()]
        examples = data_cold_start.make_cold_start_examples(
            task, problems, self.tokenizer,
            critic=critic,
            refine_fraction=1.0 if refine else 0.0,
            max_prompt_tokens=cfg.golf.max_refinement_prompt_tokens,
            template=refinement_lib.TEMPLATES[cfg.golf.template],
            template_kwargs=self.template_kwargs,
            seed=cfg.seed * 100_003 + step,
        )
        batch = cold_start_lib.sft_batch(
            examples, prompt_len=self.sft_prompt_len(examples), response_len=cfg.sampling.max_new_tokens,
            pad_id=self.tokenizer.pad_id,
        )
        state, metrics = self.sft_trainer.step(state, self.sft_trainer.put_batch(batch))
        metrics = metrics_lib.to_scalars(metrics)
        return state, {
            "cold_start/nll": metrics["loss"],
            "cold_start/refine_batch": float(refine),
            "grad_norm": metrics["grad_norm"],
            "train/response_tokens": metrics["train/response_tokens"],
            "train/skipped_nonfinite": metrics["train/skipped_nonfinite"],
        }

    def sft_prompt_len(self, examples: list[Any]) -> int:
        """The prompt length of a supervised batch of `examples`: the smallest of
        the rollout's prompt buckets that fits (so the cold start compiles once
        per bucket too), or the longest prompt when none does."""
        longest = max(len(e.prompt_tokens) for e in examples)
        return next((b for b in self.cfg.sampling.prompt_buckets if b >= longest), longest)

    def build_batch(
        self, params: Any, problems: list[Any], key: jax.Array, sampler: Sampler | None = None,
        *, parts: bool = False,
    ) -> tuple[Any, dict]:
        """One host train batch sampled by `params` (GRPO, or GOLF's 2N rows) and
        its metrics; with `parts`, GOLF's batch comes as its two parts
        (golfjax/loops/golf.py), which `Trainer.step` trains without padding
        the short original prompts to the refinement prompts' length."""
        sampler = sampler or self.sampler
        prompts = [self.tokenizer.encode_prompt(p.question, self.template_kwargs) for p in problems]
        groups = rl_lib.sample_groups(
            sampler, params, problems, prompts, key, self.task, self.tokenizer
        )
        if self.golf is None:
            b, g = len(problems), groups.group_size
            batch = rl_lib.to_batch(
                groups.rollout, groups.reward_N, np.repeat(np.arange(b), g), self.advantage_fn
            )
            info = rl_lib.group_metrics(groups.reward_BxG())
            info["samples/generated"] = float(b * g)
            return batch, info
        return self.golf.build_batch(
            params, groups, sampler, self.advantage_fn, jax.random.fold_in(key, 1), parts=parts)

    def rl_step(self, state: state_lib.TrainState, data: EpochIterator, key: jax.Array) -> tuple[Any, dict]:
        problems = [self.train_problems[i] for i in data.next()]
        batch, info = self.build_batch(state.params, problems, key, parts=True)
        batch = self.trainer.put_batch(batch)
        if self.cfg.train.recompute_old_logp:
            batch = self.trainer.with_old_logprobs(state, batch)
        state, metrics = self.trainer.step(state, batch)
        metrics = metrics_lib.to_scalars(metrics)
        step_lib.check_finite(metrics, self.trainer.step_cfg, int(state.step))
        return state, {**metrics, **info}

    def evaluate(self, params: Any, step: int) -> dict[str, float]:
        # VESPO's rollout worker may be sampling on the same devices meanwhile.
        with self.vespo.device_lock if self.vespo else contextlib.nullcontext():
            return rl_lib.evaluate(
                self.eval_sampler, params, self.test_problems,
                jax.random.fold_in(jax.random.fold_in(self.rng, step), 2),
                self.task, self.tokenizer, self.template_kwargs,
                batch_size=self.cfg.train.prompts_per_step,
            )


def run(config: Any, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the experiment described by `config` in `workdir`.

    Args:
      config: an `ml_collections.ConfigDict` (or dict) of `RunConfig` keys.
      workdir: the run's directory; resumed if it holds a checkpoint.

    Returns:
      The last logged metrics (host floats).

    Raises:
      WorkdirLockedError: another run holds `workdir`.
      CheckpointError: `workdir` holds checkpoints and none is intact.
      ValueError: the config differs from the checkpoint's in a key that a
        resume may not change.
      FloatingPointError: the non-finite policy stopped the run.
    """
    cfg = config if isinstance(config, config_lib.RunConfig) else config_lib.build(config_lib.RunConfig, config)
    workdir = os.path.abspath(workdir)
    primary = jax.process_index() == 0

    def say(line: str) -> None:
        if primary:
            print(line, flush=True)

    # Nothing is written into the work directory before the lock is held.
    with workdir_lib.lock(workdir), contextlib.closing(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep
    )) as ckpt:
        return _run_locked(cfg, workdir, ckpt, say)


def _run_locked(
    cfg: config_lib.RunConfig, workdir: str, ckpt: checkpoint_lib.Checkpointer,
    say: Callable[[str], None],
) -> dict[str, float]:
    """`run`, once the work directory is locked and its checkpointer open."""
    config_dict = config_lib.to_dict(cfg)
    cold_steps, total = cfg.cold_start.steps, cfg.cold_start.steps + cfg.train.steps
    found = ckpt.newest_intact(report=lambda line: say(f"{workdir}: {line}"))
    if found is not None:
        allowed, refused = checkpoint_lib.config_changes(found.config, config_dict)
        if refused:
            raise ValueError(
                f"{workdir} holds a run with a different config; differing keys: " + "; ".join(refused)
            )
        if found.step >= total:
            say(f"{workdir}: the run is complete at step {found.step} (cold_start.steps +"
                f" train.steps = {total}); nothing to do")
            records = metrics_lib.read_metrics(workdir)
            return {k: float(v) for k, v in (records[-1] if records else {}).items() if k != "step"}
        say(f"{workdir}: resuming from checkpoint step {found.step}")
        if allowed:
            say(f"{workdir}: settings changed since the checkpoint: " + "; ".join(allowed))

    r = Run(cfg, workdir)
    sft_data = EpochIterator(len(r.cold_problems), cfg.cold_start.batch_size, cfg.seed) if cold_steps else None
    if cfg.task.dataset:
        from golfjax.data.pipeline import PromptPipeline  # grain: only dataset runs need it.

        # Prompts longer than the largest prompt bucket could not be sampled;
        # they are dropped (and counted) here rather than failing mid-run.
        # Each process reads its own shard; the positions are all-gathered so
        # every process holds the same global batch (golfjax/sharding.py).
        processes = jax.process_count()
        if cfg.train.prompts_per_step % processes:
            raise ValueError(
                f"train.prompts_per_step = {cfg.train.prompts_per_step} does not split over"
                f" {processes} processes, each reading its own shard of task.dataset")
        rl_data = PromptPipeline(
            r.task.load("train"), r.tokenizer, batch_size=cfg.train.prompts_per_step // processes,
            seed=cfg.seed + 1, max_prompt_tokens=max(cfg.sampling.prompt_buckets),
            template_kwargs=r.template_kwargs, gather=True,
        )
    else:
        rl_data = EpochIterator(len(r.train_problems), cfg.train.prompts_per_step, cfg.seed + 1)
    counters = {"prompts": 0, "samples": 0}

    if found is None:
        state = r.trainer.init_state(r.initial_params, cfg.seed)
    else:
        state, _ = ckpt.restore(r.trainer.abstract_state, found.step)
        data = found.data
        rl_data.restore(data["rl"])
        if sft_data is not None:
            sft_data.restore(data["sft"])
        counters = data["counters"]
    del r.initial_params
    step = int(state.step)
    guard = nonfinite_lib.NonfiniteGuard(
        cfg.train.nonfinite, cfg.train.max_consecutive_skips, streak=counters.get("nonfinite_streak", 0))
    writer = metrics_lib.MetricsWriter(
        workdir, total_steps=total, resume_from_step=None if found is None else found.step)

    def data_state() -> dict[str, Any]:
        return {
            "rl": rl_data.state(),
            "sft": sft_data.state() if sft_data else None,
            "counters": {**counters, "nonfinite_streak": guard.streak},
        }

    last: dict[str, float] = {}
    # The VESPO loop, a context manager, stops its rollout worker with the run.
    with contextlib.closing(writer), _preemption_flag() as preempted, r.vespo or contextlib.nullcontext():
        if found is None and cold_steps == 0:
            writer.write(0, r.evaluate(state.params, 0))  # The starting point.
        while step < total:
            started = time.monotonic()
            if step < cold_steps:
                state, last = r.cold_start_step(state, sft_data, step)
            else:
                if step == cold_steps and cold_steps:
                    # Fresh Adam moments for RL; the SFT moments reflect another loss.
                    state = r.trainer.init_state(state.params, cfg.seed)
                    state = state.replace(step=jax.device_put(np.int32(step), state.step.sharding))
                key = jax.random.fold_in(r.rng, step)
                if r.vespo is None:
                    state, last = r.rl_step(state, rl_data, key)
                else:
                    state, last = r.vespo.step(state, rl_data, key)
                counters["prompts"] += cfg.train.prompts_per_step
                counters["samples"] += int(last.pop("samples/generated"))
                last["samples/prompts_seen"] = counters["prompts"]
                last["samples/generated"] = counters["samples"]
            # Trained response tokens per second of the whole step (rollout,
            # scoring and update; evaluation excluded).
            last["perf/tokens_per_s"] = last["train/response_tokens"] / (time.monotonic() - started)
            step += 1
            guard.check(step, last, phase="cold start" if step <= cold_steps else "train")
            rl_step = step - cold_steps
            # Evaluate where RL starts (the end of the cold start), every
            # `eval.every` RL steps, and at the end.
            if rl_step >= 0 and (rl_step % cfg.eval.every == 0 or step == total):
                last |= r.evaluate(state.params, step)
            writer.write(step, last)
            # Read the flag once: a signal between deciding to save and deciding
            # to stop would otherwise stop without saving this step.
            stop = preempted.is_set()
            force = stop or step == total
            if r.vespo is None:
                ckpt.save(step, state, data_state(), config_dict, force=force)
            elif r.vespo.save_point(step, force=force, every=cfg.checkpoint.every):
                # Between rollout batches only: nothing half-trained to save.
                ckpt.save(step, state, data_state(), config_dict, force=True)
            if stop and (r.vespo is None or r.vespo.at_boundary):
                name = getattr(preempted, "name", "") or "a stop request"
                say(f"{workdir}: stopped by {name} at step {step} of {total}, with a checkpoint;"
                    " run the same command again to resume")
                break
    return last
