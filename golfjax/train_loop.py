"""`train(config, workdir)`: validate, build, restore, loop, save; top to bottom.

The work directory is the identity of a run:

    workdir/
      checkpoints/<step>/   Orbax: train state, data position, config
      metrics.jsonl         one JSON record per logged step
      tensorboard/          event files
      tokenizer/            the built-in task tokenizer, when used

Starting a run in a directory that holds a checkpoint resumes it exactly (same
parameters, optimizer moments, data order and sampling keys). The config may
then differ from the saved one only in keys that lengthen a finished run or
change what is measured (`config.RESUMABLE_KEYS`: `train.steps`, `eval.*`);
those changes are printed, and any other difference stops the run with an
error naming every differing key. SIGTERM (preemption) saves a checkpoint and
returns cleanly.

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
import signal
import threading
import time
from typing import Any, Iterator

import jax
import numpy as np

from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train.state import TrainState


@contextlib.contextmanager
def preemption_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the run is inside this block."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # Signals are only delivered to the main thread.
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_changes(saved: dict[str, Any] | None, config: dict[str, Any]) -> list[str]:
    """The differences to a saved config that a resume accepts (`RESUMABLE_KEYS`).

    Raises:
      ValueError naming every other differing key.
    """
    if saved is None:
        return []
    diff = checkpoint_lib.config_diff(saved, config)
    refused = [d for d in diff if not d.startswith(config_lib.RESUMABLE_KEYS)]
    if refused:
        raise ValueError(
            "the work directory holds a run with a different config; differing keys: " + "; ".join(refused))
    return diff


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
    """
    # ------------------------------------------------------------ config
    # Every value is checked before anything is built or written.
    cfg = config if isinstance(config, config_lib.RunConfig) else config_lib.build(config_lib.RunConfig, config)
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    config_dict = config_lib.to_dict(cfg)
    workdir = os.path.abspath(workdir)

    # ------------------------------------------------------------ restore (config)
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep)
    try:
        changes = resume_changes(ckpt.restore_config(), config_dict)
    except ValueError as e:
        ckpt.close()
        raise ValueError(f"{workdir}: {e}") from None
    for change in changes:
        print(f"resuming {workdir} with a changed setting: {change}")

    # ------------------------------------------------------------ build
    c, initial_params = components_lib.build(cfg, workdir)
    cold_steps, total = cfg.cold_start.steps, cfg.total_steps
    cold_data = c.cold_start.data() if c.cold_start else None
    rl_data = c.rl_data()
    counters = {"prompts": 0, "samples": 0}
    rng = jax.random.PRNGKey(cfg.seed)

    # ------------------------------------------------------------ restore (state)
    latest = ckpt.latest_step()
    if latest is None:
        first = c.cold_start_trainer if cold_steps else c.trainer
        state = first.init_state(initial_params, cfg.seed)
    else:
        # A checkpoint of the cold start (up to its last step) holds its optimizer's state.
        trainer = c.cold_start_trainer if latest <= cold_steps and cold_steps else c.trainer
        state, data = ckpt.restore(trainer.abstract_state)
        rl_data.restore(data["rl"])
        if cold_data is not None:
            cold_data.restore(data["sft"])
        counters = data["counters"]
    del initial_params
    step = int(state.step)

    def data_state() -> dict[str, Any]:
        return {"rl": rl_data.state(), "sft": cold_data.state() if cold_data else None, "counters": counters}

    def evaluate(params: Any, step: int) -> dict[str, float]:
        # An asynchronous rollout worker may be sampling on the same devices.
        with c.schedule.device_lock:
            return c.evaluator(params, jax.random.fold_in(jax.random.fold_in(rng, step), 2))

    # ------------------------------------------------------------ metrics
    writer = metrics_lib.MetricsWriter(workdir, total_steps=total, resume_from_step=latest)
    last: dict[str, float] = {}
    if latest is None and cold_steps == 0:
        writer.write(0, evaluate(state.params, 0))  # The starting point.

    # ------------------------------------------------------------ loop
    # The schedule, a context manager, stops its rollout worker with the run.
    with preemption_flag() as preempted, c.schedule:
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
                counters["prompts"] += cfg.train.prompts_per_step
                counters["samples"] += int(last.pop("samples/generated"))
                last["samples/prompts_seen"] = counters["prompts"]
                last["samples/generated"] = counters["samples"]
            # Trained response tokens per second of the whole step (rollout,
            # scoring and update; evaluation excluded).
            last["perf/tokens_per_s"] = last["train/response_tokens"] / (time.monotonic() - started)
            step += 1
            rl_step = step - cold_steps
            # Evaluate where RL starts (the end of the cold start), every
            # `eval.every` RL steps, and at the end.
            if rl_step >= 0 and (rl_step % cfg.eval.every == 0 or step == total):
                last |= evaluate(state.params, step)
            writer.write(step, last)

            # -------------------------------------------------------- save
            # Read the flag once: a SIGTERM between deciding to save and deciding
            # to stop would otherwise stop without saving this step.
            stop = preempted.is_set()
            force = stop or step == total
            if step <= cold_steps:
                ckpt.save(step, state, data_state(), config_dict, force=force)
            elif c.schedule.save_point(step, force=force, every=cfg.checkpoint.every):
                # Between rollouts only: nothing half-trained to save.
                ckpt.save(step, state, data_state(), config_dict, force=True)
            if stop and c.schedule.at_boundary:
                break
    ckpt.close()
    writer.close()
    return last
