"""Tests for golfjax/train/step.py's update: no non-finite state, and the learning rate it logs.

issue 26, Found 3 (an update that makes a parameter or a moment non-finite is
skipped inside the step) and Found 2 (the schedule spans the run; `optimizer/lr`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.losses import LossConfig
from golfjax.models import config as model_config_lib
from golfjax.models import transformer
from golfjax.train import state as state_lib
from golfjax.train import step as step_lib
from golfjax.train.trainer import Trainer
from golfjax.types import make_batch

MODEL = model_config_lib.get_preset("tiny")
N, P, T = 8, 6, 5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    response_mask = np.arange(T)[None, :] < rng.integers(1, T + 1, N)[:, None]
    return make_batch(
        prompt_tokens_NxP=rng.integers(1, MODEL.vocab_size, (N, P)),
        prompt_mask_NxP=np.ones((N, P), bool),
        tokens_NxT=np.where(response_mask, rng.integers(1, MODEL.vocab_size, (N, T)), 0),
        response_mask_NxT=response_mask,
        behaviour_logp_NxT=np.log(rng.uniform(0.001, 0.02, (N, T))),
        advantage_N=rng.normal(size=N),
    )


def _params():
    return transformer.init_params(MODEL, jax.random.PRNGKey(0))


def _exploding_moment() -> optax.GradientTransformation:
    """Small finite updates, and a moment that overflows float32 (g * 1e60)."""

    def init(params):
        return {"moment": jax.tree.map(jnp.zeros_like, params)}

    def update(grads, state, params=None):
        del params
        moment = jax.tree.map(lambda m, g: m + g * 1e30 * 1e30, state["moment"], grads)
        return jax.tree.map(lambda g: -1e-3 * g, grads), {"moment": moment}

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("optimizer, applied", [
    (optax.sgd(1e-2), True),
    (optax.sgd(float("inf")), False),  # Finite gradients, infinite parameters.
    (_exploding_moment(), False),  # Finite parameters, an infinite moment.
], ids=["finite", "nonfinite_params", "nonfinite_moment"])
def test_an_update_that_would_make_the_state_nonfinite_is_skipped(optimizer, applied):
    step = jax.jit(functools.partial(
        step_lib.train_step, model_config=MODEL, optimizer=optimizer,
        cfg=config_lib.TrainSection(loss="reinforce"), loss_cfg=LossConfig().for_loss("reinforce"),
        temperature=1.0))
    state = state_lib.init_train_state(_params(), optimizer, seed=0)
    before = jax.device_get(state)
    state, metrics = step(state, _batch(), jax.random.PRNGKey(0))
    metrics = metrics_lib.to_scalars(metrics)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert metrics["train/skipped_nonfinite"] == float(not applied)
    after = jax.device_get(state)
    assert int(after.step) == 1
    same = jax.tree.leaves(jax.tree.map(np.array_equal, after.params, before.params))
    assert all(same) != applied
    if not applied:  # Nothing of the update is kept: parameters and moments.
        jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(after))


def test_a_cosine_run_ends_at_its_floor_and_logs_its_rate_every_step():
    steps, lr = 100, 1e-2
    cfg = config_lib.RunConfig(
        train=config_lib.TrainSection(steps=steps),
        optimizer=state_lib.OptimizerConfig(lr=lr, schedule="cosine", min_lr_ratio=0.1, warmup_steps=10))
    assert cfg.rl_optimizer.total_steps == steps  # The horizon is the run's, not a default.
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(MODEL, cfg.train, cfg.loss, cfg.rl_optimizer, mesh)
    state = trainer.init_state(_params(), 0)
    batch = trainer.put_batch(_batch())
    rates = []
    for _ in range(steps):
        state, metrics = trainer.step(state, batch)
        rates.append(float(metrics["optimizer/lr"]))
    assert rates[0] == 0.0 and rates[5] == pytest.approx(lr / 2) and rates[10] == pytest.approx(lr)
    assert rates[-1] == pytest.approx(lr * 0.1, rel=1e-6)  # The last step is at lr * min_lr_ratio.
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
