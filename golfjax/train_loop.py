"""`train(config, workdir)`: validate, lock, restore, build, loop, save; top to bottom.

The work directory is the identity of a run:

    workdir/
      lock                  the running process's host and pid (golfjax/train/workdir.py)
      checkpoints/<step>/   Orbax: train state, data position, config, and a
                            digest verified on restore (golfjax/train/checkpoint.py)
      metrics.jsonl         one JSON record per step, each step exactly once
      tensorboard/          event files
      tokenizer/            the built-in task tokenizer, when used
      reference/            the KL term's reference when it is the cold
                            start's last parameters (golfjax/train/reference.py)

Starting a run in a directory that holds a checkpoint resumes it exactly (same
parameters, optimizer moments, data order and sampling keys) from the newest
step that verifies and restores finite; a damaged step is reported in one line
and set aside. The config may then differ from the saved one only in keys that
lengthen a finished run or change what is measured (`checkpoint.RESUMABLE_KEYS`:
`train.steps`, unless a cosine schedule spans it, and `eval.*`); those changes
are printed, and any other difference stops the run with an error naming every
differing key. SIGTERM (preemption) and Ctrl-C save a
checkpoint and return cleanly; a second Ctrl-C interrupts at once. A second run
on a locked directory fails at once, naming the holder.

Every check of the config and of its inputs (the task's problems, a
reference checkpoint's architecture) runs before the lock is taken, so a
refused run writes nothing.

Phases: an optional supervised cold start (`cold_start.steps` steps,
golfjax/loops/cold_start.py), then `train.steps` RL optimizer steps, each the
train step on the schedule's `next_batch` (golfjax/loops/schedule.py, or
golfjax/loops/async_rollout.py) over the run's batch source
(golfjax/loops/rl.py or golfjax/loops/golf.py); RL checkpoints are taken
where the schedule's `checkpoint_now` allows. Step numbers are global: RL
step s is `cold_start.steps + s`. Every `eval.every` RL steps (and where RL
starts, and after the last step) the policy is evaluated on the held-out split.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax import process_groups as groups
from golfjax.loops import golf as golf_lib
from golfjax.parallel import channel as channel_lib
from golfjax.parallel import rollout_group
from golfjax.rewards import make_task
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import interrupts as interrupts_lib
from golfjax.train import nonfinite as nonfinite_lib
from golfjax.train import reference as reference_lib
from golfjax.train import workdir as workdir_lib
from golfjax.train.state import TrainState


def preemption_flag() -> contextlib.AbstractContextManager[interrupts_lib.StopRequest]:
    """A stop request set by SIGTERM or Ctrl-C while the run is inside this
    block (golfjax/train/interrupts.py: a second Ctrl-C interrupts at once)."""
    return interrupts_lib.graceful()


def rl_start(c: components_lib.Components, state: TrainState) -> TrainState:
    """RL's first state after a cold start: the cold start's parameters, fresh
    RL optimizer moments (whose learning-rate warmup starts now) and the
    global step count (golfjax/components.py explains the choice)."""
    step = state.step
    state = c.trainer.init_state(state.params, c.cfg.seed)
    return state.replace(step=jax.device_put(np.int32(step), state.step.sharding))


def check_inputs(cfg: config_lib.RunConfig) -> None:
    """The checks that read the run's inputs rather than its config: the
    task's splits against `train.prompts_per_step`, and `train.ref_path`'s
    architecture. They write nothing, and run before the lock.

    Raises:
      ConfigError naming the dotted key.
    """
    task = make_task(cfg.task.name, **cfg.task.task_kwargs())
    sizes = {split: len(task.load(split)) for split in ("train", "test")}
    for split, size in sizes.items():
        if not size:
            raise config_lib.ConfigError(
                f"config.task: task {cfg.task.name!r} with kwargs {cfg.task.task_kwargs()} has an empty {split} split")
    # A dataset run's processes read a shard each (golfjax/data/pipeline.py).
    shards = jax.process_count() if cfg.task.dataset else 1
    have, need = sizes["train"] // shards, cfg.train.prompts_per_step // shards
    if cfg.train.steps and need > have:
        where = f" ({have} per process of {shards})" if shards > 1 else ""
        raise config_lib.ConfigError(
            f"config.train.prompts_per_step={cfg.train.prompts_per_step} exceeds the {sizes['train']} problems"
            f" in the train split of task {cfg.task.name!r}{where}; expected at most that many")
    reference_lib.check_path(cfg)


def _check_resume(cfg: config_lib.RunConfig, found: checkpoint_lib.Found, config_dict: dict[str, Any],
                  workdir: str) -> list[str]:
    """The changes of `cfg` since `found`'s config that a resume allows.

    Raises:
      ConfigError naming every refused key.
    """
    resumable = checkpoint_lib.RESUMABLE_KEYS
    cosine = cfg.optimizer.schedule == "cosine"
    if cosine:  # The schedule spans train.steps: another value changes every step's rate.
        resumable = tuple(k for k in resumable if k != "train.steps")
    allowed, refused = checkpoint_lib.config_changes(found.config, config_dict, resumable)
    if refused:
        why = (" (train.steps is the cosine schedule's horizon: start a new run to change it)"
               if cosine and any(r.startswith("train.steps:") for r in refused) else "")
        raise config_lib.ConfigError(
            f"{workdir} holds a run with a different config; differing keys: " + "; ".join(refused) + why)
    return allowed


def train(config: Any, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the experiment described by `config` in `workdir`.

    Args:
      config: an `ml_collections.ConfigDict` (or dict) of `RunConfig` keys, or a `RunConfig`.
      workdir: the run's directory; resumed if it holds a checkpoint.

    Returns:
      The last logged metrics (host floats).

    Raises:
      ConfigError (a ValueError): a config value is invalid (naming its
        dotted key), or differs from the checkpoint's in a key that a resume
        may not change.
      WorkdirLockedError: another run holds `workdir`.
      CheckpointError: `workdir` holds checkpoints and none is intact.
      FloatingPointError: the non-finite policy stopped the run.
      OSError: the work directory cannot be written (read-only, full).
    """
    # ------------------------------------------------------------ config
    # Every value is checked before anything is built or written.
    cfg = config if isinstance(config, config_lib.RunConfig) else config_lib.build(config_lib.RunConfig, config)
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    check_inputs(cfg)
    workdir = os.path.abspath(workdir)
    if cfg.schedule.rollout_processes:  # Two process groups (golfjax/parallel/): which is this one?
        split = groups.ProcessGroups.split(jax.process_count(), cfg.schedule.rollout_processes)
        role = split.role(jax.process_index())
        groups.enter(split.members(role))
        if role == groups.ROLLOUT:
            rollout_group.serve(cfg, workdir)
            return {}
        try:
            return _train(cfg, workdir)
        except BaseException:
            channel_lib.abort()  # Else the rollout group would wait for weights forever.
            raise
    return _train(cfg, workdir)


def _train(cfg: config_lib.RunConfig, workdir: str) -> dict[str, float]:
    """`train` on the learner's processes."""
    primary = groups.is_primary()

    def say(line: str) -> None:
        if primary:
            print(f"{workdir}: {line}", flush=True)

    # ------------------------------------------------------------ lock
    # Nothing is written into the work directory before the lock is held.
    with workdir_lib.lock(workdir), contextlib.closing(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
    )) as ckpt:
        return _train_locked(cfg, workdir, ckpt, say)


def _train_locked(
    cfg: config_lib.RunConfig, workdir: str, ckpt: checkpoint_lib.Checkpointer,
    say: Callable[[str], None],
) -> dict[str, float]:
    """`train`, once the work directory is locked and its checkpointer open."""
    config_dict = config_lib.to_dict(cfg)
    cold_steps, total = cfg.cold_start.steps, cfg.total_steps

    # ------------------------------------------------------------ restore (config)
    # The newest step whose digest and config read, for the config check;
    # nothing is moved or reported yet (`restore_newest` below does both).
    found = ckpt.newest_intact(report=lambda _: None, set_aside=False)
    if found is not None:
        allowed = _check_resume(cfg, found, config_dict, workdir)
        if found.step >= total:
            say(f"the run is complete at step {found.step} (cold_start.steps + train.steps ="
                f" {total}); nothing to do")
            records = metrics_lib.read_metrics(workdir)
            return {k: float(v) for k, v in (records[-1] if records else {}).items() if k != "step"}

    # ------------------------------------------------------------ build
    c, initial_params = components_lib.build(cfg, workdir)
    cold_data = c.cold_start.data() if c.cold_start else None
    rl_data = c.rl_data()
    counters = {"prompts": 0, "samples": 0}
    rng = jax.random.PRNGKey(cfg.seed)
    # The KL term's frozen reference (golfjax/train/reference.py): a checkpoint
    # directory's, or RL's starting parameters; those of a cold start are
    # taken where RL starts (below), or restored when resuming after it.
    kl = cfg.train.kl_coef > 0
    reference = None
    if kl and cfg.train.ref_path:
        reference = reference_lib.load_path(cfg.train.ref_path, c.model_config, c.mesh)
    elif kl and not cold_steps:
        # A fresh state may take (and the first step donate) these very buffers.
        reference = initial_params if found is not None else reference_lib.copy(initial_params)

    # ------------------------------------------------------------ restore (state)
    if found is None:
        first = c.cold_start_trainer if cold_steps else c.trainer
        state = first.init_state(initial_params, cfg.seed)
    else:
        # A checkpoint of the cold start (up to its last step) holds its optimizer's state.
        def abstract_state(step: int) -> TrainState:
            return (c.cold_start_trainer if step <= cold_steps and cold_steps else c.trainer).abstract_state

        # The newest step that also restores, finite; damaged newer ones are set aside.
        newest = found.step
        found = ckpt.restore_newest(abstract_state, report=say)
        if found.step != newest:
            allowed = _check_resume(cfg, found, config_dict, workdir)
        say(f"resuming from checkpoint step {found.step}")
        if allowed:
            say("settings changed since the checkpoint: " + "; ".join(allowed))
        state = found.state
        rl_data.restore(found.data["rl"])
        if cold_data is not None:
            cold_data.restore(found.data["sft"])
        counters = dict(found.data["counters"])
        if kl and reference is None and found.step > cold_steps:
            reference = reference_lib.restore(workdir, c.trainer.abstract_state.params)
    del initial_params
    if reference is not None:
        c.schedule.use_reference(reference)
    step = int(state.step)
    guard = nonfinite_lib.NonfiniteGuard(
        cfg.train.nonfinite, cfg.train.max_consecutive_skips, streak=int(counters.pop("nonfinite_streak", 0)))

    def data_state() -> dict[str, Any]:
        return {
            "rl": rl_data.state(),
            "sft": cold_data.state() if cold_data else None,
            "counters": {**counters, "nonfinite_streak": guard.streak},
        }

    def evaluate(params: Any, step: int) -> dict[str, float]:
        with c.schedule.device_programs():
            return c.evaluator(params, jax.random.fold_in(jax.random.fold_in(rng, step), 2))

    # ------------------------------------------------------------ metrics
    # Records after the restored step (all of them on a fresh start) are
    # dropped, so each step is in metrics.jsonl exactly once.
    writer = metrics_lib.MetricsWriter(
        workdir, total_steps=total, resume_from_step=None if found is None else found.step)
    # GOLF's injected rows, for benchmarks/golf_vs_grpo.py's offline replay.
    injected_log = None
    if cfg.golf.enabled and cfg.golf.log_injected:
        injected_log = metrics_lib.StepLog(
            workdir, "injected.jsonl", resume_from_step=None if found is None else found.step)
    last: dict[str, float] = {}

    # ------------------------------------------------------------ loop
    # The schedule, a context manager, stops an asynchronous producer with the run.
    injected_closing = contextlib.closing(injected_log) if injected_log else contextlib.nullcontext()
    with contextlib.closing(writer), injected_closing, preemption_flag() as preempted, c.schedule:
        if found is None and cold_steps == 0:
            writer.write(0, evaluate(state.params, 0))  # The starting point.
        while step < total:
            started = time.monotonic()
            if step < cold_steps:
                batch, info = c.cold_start.batch(step, cold_data)
                state, metrics = c.cold_start_trainer.step(state, c.cold_start_trainer.put_batch(batch))
                last = {**c.cold_start.metrics(metrics_lib.to_scalars(metrics)), **info}
            else:
                if step == cold_steps and cold_steps:
                    state = rl_start(c, state)
                    if kl and not cfg.train.ref_path:  # RL's starting parameters, kept for resumes.
                        c.schedule.use_reference(reference_lib.copy(state.params))
                        reference_lib.save(workdir, c.schedule.reference)
                batch, info = c.schedule.next_batch(state, rl_data, jax.random.fold_in(rng, step))
                began = time.time()
                with c.schedule.device_programs():
                    state, metrics = c.trainer.step(state, batch)
                last = {**metrics_lib.to_scalars(metrics), **info}
                last |= {"perf/train_start_s": began, "perf/train_end_s": time.time()}  # Wall clock.
                injected = last.pop(golf_lib.INJECTED_ROWS, None)
                if injected_log is not None:
                    injected_log.write(step + 1, {"rows": injected})
                counters["prompts"] += cfg.train.prompts_per_step
                counters["samples"] += int(last["samples/generated"])
                last["samples/prompts_seen"] = counters["prompts"]
                last["samples/generated_total"] = counters["samples"]
            # Trained response tokens per second of the whole step (rollout,
            # scoring and update; evaluation excluded).
            last["perf/tokens_per_s"] = last["train/response_tokens"] / (time.monotonic() - started)
            step += 1
            guard.check(step, last, phase="cold start" if step <= cold_steps else "train")
            rl_step = step - cold_steps
            # Evaluate where RL starts (the end of the cold start), every
            # `eval.every` RL steps, and at the end.
            if rl_step >= 0 and (rl_step % cfg.eval.every == 0 or step == total):
                last |= evaluate(state.params, step)
            writer.write(step, last)

            # -------------------------------------------------------- save
            # Read the flag once: a signal between deciding to save and deciding
            # to stop would otherwise stop without saving this step.
            stop = preempted.is_set()
            force = stop or step == total
            if step <= cold_steps:
                ckpt.save(step, state, data_state(), config_dict, force=force)
                ready = True
            else:  # Between rollouts only: nothing half-trained to save.
                ready = c.schedule.checkpoint_now(step, force=force, every=cfg.checkpoint.every)
                if ready:
                    ckpt.save(step, state, data_state(), config_dict, force=True)
            if stop and ready:
                say(f"stopped by {getattr(preempted, 'name', '') or 'a stop request'} at step {step} of {total},"
                    " with a checkpoint; run the same command again to resume")
                break
    return last
