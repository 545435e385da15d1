"""golfjax/train/routing.py through the Trainer: routing replay, the
route-mismatch metrics, the load-balancing loss, expert parallelism."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import advantages
from golfjax import config as config_lib
from golfjax import sampling
from golfjax import sharding as sharding_lib
from golfjax.config import TrainSection
from golfjax.loops import rl
from golfjax.losses import LossConfig
from golfjax.models import config as model_config_lib
from golfjax.models import moe
from golfjax.models import transformer
from golfjax.train import routing as routing_lib
from golfjax.train.state import OptimizerConfig
from golfjax.train.trainer import Trainer
from golfjax.types import make_batch

CONFIG = model_config_lib.PRESETS["tiny_qwen3_moe"]
PROMPTS = [[5, 17, 42, 9, 77, 3, 101], [64, 2]]


@functools.lru_cache(maxsize=None)
def _rollout():
    """A tiny MoE policy, and 2 prompts x 4 samples of 12 tokens from it."""
    params = transformer.init_params(CONFIG, jax.random.key(0))
    cfg = sampling.SamplingConfig(temperature=1.0, max_new_tokens=12, group_size=4,
                                  prompt_buckets=(8,), batch_buckets=(2,), stop_ids=(7,))
    r = jax.device_get(sampling.generate(params, PROMPTS, jax.random.key(1), cfg,
                                         model_config=CONFIG))
    reward = np.linspace(0.0, 1.0, 8).astype(np.float32)
    batch = rl.to_batch(r, reward, r.group_id_N, jax.jit(advantages.get_advantage("grpo")))
    return params, r, batch


def _trainer(replay: str = "rollout", mesh_dims=(1, 1, 1), remat: bool = False, **train):
    mesh = sharding_lib.make_mesh(*mesh_dims, devices=jax.devices()[:np.prod(mesh_dims)])
    # Adam's eps far above the gradients makes an update proportional to the
    # gradient, so equal updates mean equal gradients (with the default eps
    # an entry whose gradient is ~1e-8 moves by a rounding-sensitive amount).
    return Trainer(CONFIG.replace(routing_replay=replay, remat=remat),
                   TrainSection(loss="vespo", **train), LossConfig(),
                   OptimizerConfig(lr=1.0, eps=1.0), mesh)


def _response(x, r):
    return np.where(r.response_mask_NxT, x, 0.0)


def test_replay_with_unchanged_weights_recomputes_the_samplers_logprobs():
    params, r, batch = _rollout()
    assert r.response_mask_NxT.sum() > 40  # Most rows run several tokens.
    trainer = _trainer("rollout")
    logp = np.asarray(trainer.logprobs(params, trainer.put_batch(batch)))
    np.testing.assert_allclose(_response(logp, r), _response(r.behaviour_logp_NxT, r),
                               atol=1e-5, rtol=0)
    # The replay is what the forward pass routes by: other recorded experts
    # move the log-probs of the tokens after the first (by 100 times the
    # tolerance above, typically; the tiny model's outputs are small).
    shifted = batch.replace(routes_NxTxLxA=(batch.routes_NxTxLxA + 1) % CONFIG.num_experts)
    moved = np.asarray(trainer.logprobs(params, trainer.put_batch(shifted)))
    np.testing.assert_array_equal(moved[:, 0], logp[:, 0])
    assert np.median(np.abs(moved - logp)[:, 1:][r.response_mask_NxT[:, 1:]]) > 1e-3
    # Without replay a recomputation with the same weights routes alike.
    plain = _trainer("off")
    np.testing.assert_allclose(
        _response(np.asarray(plain.logprobs(params, plain.put_batch(shifted))), r),
        _response(logp, r), atol=1e-5, rtol=0)


def decode_recorded(r):
    from golfjax.decode import recorded_routes

    return np.asarray(recorded_routes(r.response_mask_NxT))


def test_mismatch_metrics_and_the_balancing_loss_term():
    params, r, batch = _rollout()
    coef = 0.5
    trainer = _trainer("off", moe_aux_loss_coef=coef)
    _, metrics = trainer.step(trainer.init_state(params, 0), trainer.put_batch(batch))
    assert float(metrics["moe/route_mismatch"]) == 0.0
    assert float(metrics["moe/route_mismatch_tokens"]) == 0.0
    # The term is transformers' loss of the forward pass over the real tokens.
    tokens = np.concatenate([r.prompt_tokens_NxP, r.tokens_NxT], axis=1)
    visible = np.concatenate([r.prompt_mask_NxP, np.ones_like(r.response_mask_NxT)], axis=1)
    real = np.concatenate([r.prompt_mask_NxP, r.response_mask_NxT], axis=1)
    positions = np.maximum(np.cumsum(visible, axis=1) - 1, 0)
    _, _, routing = transformer.hidden_routed(params, tokens, positions, visible,
                                              config=CONFIG, token_mask_NxQ=real)
    expected = float(moe.load_balancing_loss(routing, CONFIG))
    assert 1.5 < expected < 3.0  # About A = 2, its value at perfectly even routing.
    assert float(metrics["loss/moe_aux"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["loss/policy"]) + coef * expected, rel=1e-5)

    # Layer 1's record of row 0's first recorded token swapped for other
    # experts; row 1's first token's experts in another order (the same set).
    routes = np.array(batch.routes_NxTxLxA)
    routes[0, 0, 1] = (routes[0, 0, 1] + 2) % CONFIG.num_experts
    routes[1, 0, 0] = routes[1, 0, 0][::-1]
    corrupted = trainer.put_batch(batch.replace(routes_NxTxLxA=routes))
    _, metrics = trainer.step(trainer.init_state(params, 0), corrupted)
    tokens = decode_recorded(r).sum()
    assert float(metrics["moe/route_mismatch_tokens"]) == pytest.approx(1 / tokens)
    assert float(metrics["moe/route_mismatch"]) == pytest.approx(1 / (2 * tokens))


def test_train_steps_with_expert_parallelism_equal_one_device():
    params, _, batch = _rollout()
    results = []
    for dims in ((1, 1, 1), (1, 8, 1)):  # Then each device holds one expert.
        # With remat, the replayed routes and the expert-parallel dispatch
        # go through the layers' recomputation in the backward pass too.
        trainer = _trainer("rollout", dims, remat=True, micro_batches=2,
                           moe_aux_loss_coef=0.01)
        state = trainer.init_state(params, 0)
        gate = state.params["layers"]["moe"]["gate"]
        assert gate.sharding.shard_shape(gate.shape)[1] == 8 // dims[1]
        metrics = []
        for _ in range(2):
            state, step_metrics = trainer.step(state, trainer.put_batch(batch))
            metrics.append(jax.device_get(step_metrics))
        results.append((jax.device_get(state.params), metrics))
    (params_one, metrics_one), (params_mesh, metrics_mesh) = results
    for one, mesh in zip(metrics_one, metrics_mesh):
        for name in ("loss", "grad_norm", "loss/moe_aux", "moe/route_mismatch"):
            # The loss is a small difference of O(1) terms: an absolute bound.
            assert float(mesh[name]) == pytest.approx(float(one[name]), rel=1e-5, abs=1e-5), name
    assert float(metrics_one[1]["moe/route_mismatch"]) > 0  # The first update moved routes.
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params_one, params)
    assert max(jax.tree.leaves(moved)) > 1e-3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0),
                 params_mesh, params_one)


def test_route_fields_are_checked_and_replay_needs_moe_grpo_batches():
    _, r, batch = _rollout()
    fields = dict(prompt_tokens_NxP=r.prompt_tokens_NxP, prompt_mask_NxP=r.prompt_mask_NxP,
                  tokens_NxT=r.tokens_NxT, response_mask_NxT=r.response_mask_NxT,
                  behaviour_logp_NxT=r.behaviour_logp_NxT, advantage_N=batch.advantage_N)
    with pytest.raises(ValueError, match="must be set together"):
        make_batch(**fields, routes_NxTxLxA=r.routes_NxTxLxA)
    with pytest.raises(ValueError, match=r"Batch.routes_NxTxLxA has shape \(8, 11, 2, 2\)"):
        make_batch(**fields, prompt_routes_NxPxLxA=r.prompt_routes_NxPxLxA,
                   routes_NxTxLxA=r.routes_NxTxLxA[:, 1:])
    with pytest.raises(ValueError, match="routing_replay='rollout' but preset='tiny' is not"):
        config_lib.ModelSection(routing_replay="rollout")
    cfg = config_lib.RunConfig(model=config_lib.ModelSection(preset="tiny_qwen3_moe",
                                                       routing_replay="rollout"),
                         golf=config_lib.GolfSection(enabled=True))
    with pytest.raises(ValueError, match="config.model.routing_replay='rollout' needs"
                       " config.golf.enabled=False"):
        config_lib.validate(cfg, 8)
    # A supervised batch (no rollout, no routes) is not replayed.
    assert routing_lib.replay(batch.replace(prompt_routes_NxPxLxA=None, routes_NxTxLxA=None),
                              CONFIG.replace(routing_replay="rollout")) is None
