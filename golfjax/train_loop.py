"""`train(config, workdir)`: validate, lock, restore, build, loop, save; top to bottom.

The work directory is the identity of a run:

    workdir/
      lock                  the running process's host and pid (golfjax/train/workdir.py)
      checkpoints/<step>/   Orbax: train state, data position, config, and a
                            digest verified on restore (golfjax/train/checkpoint.py)
      metrics.jsonl         one JSON record per step, each step exactly once
      tensorboard/          event files
      tokenizer/            the built-in task tokenizer, when used

Starting a run in a directory that holds a checkpoint resumes it exactly (same
parameters, optimizer moments, data order and sampling keys) from the newest
intact step; a damaged step is reported in one line and skipped. The config
may then differ from the saved one only in keys that lengthen a finished run or
change what is measured (`checkpoint.RESUMABLE_KEYS`: `train.steps`, `eval.*`);
those changes are printed, and any other difference stops the run with an
error naming every differing key. SIGTERM (preemption) and Ctrl-C save a
checkpoint and return cleanly; a second Ctrl-C interrupts at once. A second run
on a locked directory fails at once, naming the holder.

Phases: an optional supervised cold start (`cold_start.steps` steps,
golfjax/loops/cold_start.py), then `train.steps` RL optimizer steps, each one
`RolloutSchedule.step` (golfjax/loops/schedule.py) over the run's batch source
(golfjax/loops/rl.py or golfjax/loops/golf.py). Step numbers are global: RL
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
from golfjax.loops import golf as golf_lib
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import interrupts as interrupts_lib
from golfjax.train import nonfinite as nonfinite_lib
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


def train(config: Any, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the experiment described by `config` in `workdir`.

    Args:
      config: an `ml_collections.ConfigDict` (or dict) of `RunConfig` keys, or a `RunConfig`.
      workdir: the run's directory; resumed if it holds a checkpoint.

    Returns:
      The last logged metrics (host floats).

    Raises:
      ValueError: a config value is invalid (naming its dotted key), or differs
        from the checkpoint's in a key that a resume may not change.
      WorkdirLockedError: another run holds `workdir`.
      CheckpointError: `workdir` holds checkpoints and none is intact.
      FloatingPointError: the non-finite policy stopped the run.
    """
    # ------------------------------------------------------------ config
    # Every value is checked before anything is built or written.
    cfg = config if isinstance(config, config_lib.RunConfig) else config_lib.build(config_lib.RunConfig, config)
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    workdir = os.path.abspath(workdir)
    primary = jax.process_index() == 0

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
    found = ckpt.newest_intact(report=say)
    if found is not None:
        allowed, refused = checkpoint_lib.config_changes(found.config, config_dict)
        if refused:
            raise ValueError(
                f"{workdir} holds a run with a different config; differing keys: " + "; ".join(refused))
        if found.step >= total:
            say(f"the run is complete at step {found.step} (cold_start.steps + train.steps ="
                f" {total}); nothing to do")
            records = metrics_lib.read_metrics(workdir)
            return {k: float(v) for k, v in (records[-1] if records else {}).items() if k != "step"}
        say(f"resuming from checkpoint step {found.step}")
        if allowed:
            say("settings changed since the checkpoint: " + "; ".join(allowed))

    # ------------------------------------------------------------ build
    c, initial_params = components_lib.build(cfg, workdir)
    cold_data = c.cold_start.data() if c.cold_start else None
    rl_data = c.rl_data()
    counters = {"prompts": 0, "samples": 0}
    rng = jax.random.PRNGKey(cfg.seed)

    # ------------------------------------------------------------ restore (state)
    if found is None:
        first = c.cold_start_trainer if cold_steps else c.trainer
        state = first.init_state(initial_params, cfg.seed)
    else:
        # A checkpoint of the cold start (up to its last step) holds its optimizer's state.
        trainer = c.cold_start_trainer if found.step <= cold_steps and cold_steps else c.trainer
        state, _ = ckpt.restore(trainer.abstract_state, found.step)
        rl_data.restore(found.data["rl"])
        if cold_data is not None:
            cold_data.restore(found.data["sft"])
        counters = dict(found.data["counters"])
    del initial_params
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
        # An asynchronous rollout worker may be sampling on the same devices.
        with c.schedule.device_lock:
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
    # The schedule, a context manager, stops its rollout worker with the run.
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
                state, last = c.schedule.step(state, rl_data, jax.random.fold_in(rng, step))
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
            elif c.schedule.save_point(step, force=force, every=cfg.checkpoint.every):
                # Between rollouts only: nothing half-trained to save.
                ckpt.save(step, state, data_state(), config_dict, force=True)
            if stop and c.schedule.at_boundary:
                say(f"stopped by {getattr(preempted, 'name', '') or 'a stop request'} at step {step} of {total},"
                    " with a checkpoint; run the same command again to resume")
                break
    return last
