"""Tests for golfjax/train/step.py and golfjax/train/trainer.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import config as run_config
from golfjax import losses
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.models import config as config_lib
from golfjax.models import transformer
from golfjax.train import nonfinite as nonfinite_lib
from golfjax.train import state as state_lib
from golfjax.train import step as step_lib
from golfjax.train import trainer as trainer_lib
from golfjax.types import concat_parts
from golfjax.types import make_batch

MODEL = config_lib.get_preset("tiny")
N, P, T = 8, 6, 5


def _batch(seed=0, off_policy_rows=(2, 5), advantage=None, n=N, p=P, t=T):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(2, p + 1, n)
    prompt_mask = np.arange(p)[None, :] >= (p - prompt_len)[:, None]  # left-padded
    response_len = rng.integers(1, t + 1, n)
    response_mask = np.arange(t)[None, :] < response_len[:, None]
    off = np.zeros((n, t), bool)
    off[list(off_policy_rows)] = True
    return make_batch(
        prompt_tokens_NxP=np.where(prompt_mask, rng.integers(1, MODEL.vocab_size, (n, p)), 0),
        prompt_mask_NxP=prompt_mask,
        tokens_NxT=np.where(response_mask, rng.integers(1, MODEL.vocab_size, (n, t)), 0),
        response_mask_NxT=response_mask,
        behaviour_logp_NxT=np.log(rng.uniform(0.001, 0.02, (n, t))),
        advantage_N=rng.normal(size=n) if advantage is None else advantage,
        group_id_N=np.arange(n) // 4,
        off_policy_mask_NxT=off & response_mask,
    )


def _params(seed=0):
    return transformer.init_params(MODEL, jax.random.PRNGKey(seed))


def _trainer(mesh_shape=(1, 1, 1), loss_cfg=losses.LossConfig(), **train_kwargs):
    devices = np.array(jax.devices()[: int(np.prod(mesh_shape))])
    mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    train_cfg = run_config.TrainSection(**train_kwargs)
    # Adam's first step is g / (|g| + eps): with the default eps = 1e-8 a
    # near-zero gradient entry turns float32 summation-order noise into a
    # full-size update. eps = 1e-4 bounds that sensitivity by lr |dg| / eps,
    # so comparing parameters compares the accumulated gradients.
    opt_cfg = state_lib.OptimizerConfig(lr=1e-2, eps=1e-4, weight_decay=0.1)
    return trainer_lib.Trainer(MODEL, train_cfg, loss_cfg, opt_cfg, mesh)


def test_chunked_logprobs_equal_full_log_softmax():
    params = _params()
    batch = _batch()
    for temperature, chunk in [(1.0, 2), (0.7, 3), (1.3, 128)]:
        logp, entropy = step_lib.compute_logprobs(
            params, batch, model_config=MODEL, temperature=temperature, chunk=chunk, with_entropy=True
        )
        chex.assert_shape([logp, entropy], (N, T))
        # Independent path: the full logits of `apply` over [prompt; response].
        tokens = np.concatenate([batch.prompt_tokens_NxP, batch.tokens_NxT], axis=1)
        mask = np.concatenate([batch.prompt_mask_NxP, np.ones((N, T), bool)], axis=1)
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits, _ = transformer.apply(params, tokens, positions, mask, config=MODEL)
        log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, P - 1 : P + T - 1] / temperature)
        expected = np.take_along_axis(log_probs, batch.tokens_NxT[..., None], -1)[..., 0]
        np.testing.assert_allclose(logp, expected, atol=2e-5)
        expected_entropy = -(np.exp(log_probs) * log_probs).sum(-1)
        np.testing.assert_allclose(entropy, expected_entropy, atol=2e-5)


def test_loss_is_the_loss_library_on_the_model_logprobs():
    # GOLF batch: rows 2 and 5 are injected (shaping), the rest PPO clip; the
    # step's loss is (ppo.sum + shaping.sum) / (ppo.count + shaping.count).
    params = _params()
    batch = _batch()
    trainer = _trainer(loss="ppo_clip", loss_cfg=losses.LossConfig(agg="seq-mean-token-mean"))
    logp, _ = step_lib.compute_logprobs(params, batch, model_config=MODEL)
    on = batch.response_mask_NxT & ~batch.off_policy_mask_NxT
    off = batch.response_mask_NxT & batch.off_policy_mask_NxT
    cfg = trainer.loss_cfg
    policy, _ = losses.LOSSES["ppo_clip"](logp, batch.old_logp_NxT, batch.advantage_N, on, cfg)
    shaping, _ = losses.OFF_POLICY_LOSSES["shaping"](logp, batch.behaviour_logp_NxT, batch.advantage_N, off, cfg)
    state = trainer.init_state(params, seed=0)
    _, metrics = trainer.step(state, trainer.put_batch(batch))
    np.testing.assert_allclose(metrics["loss"], (policy + shaping).value, rtol=1e-5)
    assert float(metrics["train/offpolicy_tokens"]) == float(off.sum())


@pytest.mark.parametrize("agg", losses.AGGREGATIONS)
def test_four_micro_batches_of_two_equal_one_of_eight(agg):
    batch = _batch(seed=1)
    results = []
    for micro_batches in (1, 4):
        trainer = _trainer(
            loss="vespo", micro_batches=micro_batches, loss_cfg=losses.LossConfig(agg=agg),
            kl_coef=0.1, entropy_coef=0.01,
        )
        ref = trainer.put_batch(batch.replace(ref_logp_NxT=batch.behaviour_logp_NxT - 0.1))
        state = trainer.init_state(_params(), seed=0)
        state, metrics = trainer.step(state, ref)
        results.append((jax.device_get(state.params), metrics_lib.to_scalars(metrics)))
    (params_1, metrics_1), (params_4, metrics_4) = results
    chex.assert_trees_all_close(params_4, params_1, atol=1e-5)
    # The loss sums terms of order 0.1 to about 0.005, so float32 summation order
    # (which differs between one matmul of 8 rows and four of 2) moves it ~1e-7.
    for key in ("loss", "loss/policy", "loss/kl", "entropy", "grad_norm"):
        np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_parts_of_different_prompt_lengths_equal_their_concatenation(agg):
    # GOLF's two parts: short original prompts with injected rows, long
    # refinement prompts; two micro-batches each, KL and entropy terms on, the
    # old and reference log-probs recomputed per part.
    parts = (_batch(seed=3, off_policy_rows=(1,), n=4, p=3), _batch(seed=4, off_policy_rows=(), n=4, p=9))
    whole = concat_parts(parts, pad_id=0)
    chex.assert_shape(whole.prompt_tokens_NxP, (8, 9))
    results = []
    for batch in (whole, parts):
        trainer = _trainer(loss="ppo_clip", micro_batches=2, loss_cfg=losses.LossConfig(agg=agg),
                           kl_coef=0.1, entropy_coef=0.01)
        state = trainer.init_state(_params(), seed=0)
        device_batch = trainer.with_ref_logprobs(_params(seed=1), trainer.put_batch(batch))
        device_batch = trainer.with_old_logprobs(state, device_batch)
        state, metrics = trainer.step(state, device_batch)
        results.append((jax.device_get(state.params), metrics_lib.to_scalars(metrics)))
    (params_whole, metrics_whole), (params_parts, metrics_parts) = results
    chex.assert_trees_all_close(params_parts, params_whole, atol=1e-5)
    for key in ("loss", "loss/policy", "loss/kl", "entropy", "grad_norm",
                "train/response_tokens", "train/offpolicy_tokens"):
        np.testing.assert_allclose(metrics_parts[key], metrics_whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert metrics_whole["train/offpolicy_tokens"] > 0


def test_jitted_step_compiles_ahead_of_time_per_layout():
    # benchmarks/train_step.py lowers and compiles the step before timing it.
    trainer = _trainer(loss="ppo_clip")
    for batch in (_batch(), (_batch(n=4, p=3, off_policy_rows=()), _batch(n=4, off_policy_rows=(1,)))):
        batch = trainer.put_batch(batch)
        state = trainer.init_state(_params(), seed=0)
        key = jax.random.fold_in(state.rng, state.step)
        compiled = trainer.jitted_step(batch).lower(state, batch, key).compile()
        _, expected = trainer.step(trainer.init_state(_params(), seed=0), batch)
        _, metrics = compiled(state, batch, key)
        np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=1e-6)


def test_parts_must_share_the_response_length_and_divide():
    trainer = _trainer(micro_batches=4)
    state = trainer.init_state(_params(), seed=0)
    with pytest.raises(ValueError, match=r"response lengths T = \[5, 7\]"):
        trainer.step(state, trainer.put_batch((_batch(n=4, off_policy_rows=()), _batch(n=4, off_policy_rows=(), t=7))))
    with pytest.raises(ValueError, match="batch part 1 has 6 rows, not divisible by micro_batches=4"):
        trainer.step(state, trainer.put_batch((_batch(n=4, off_policy_rows=()), _batch(n=6, off_policy_rows=()))))
    with pytest.raises(ValueError, match="no parts"):
        trainer.step(state, ())


@pytest.mark.slow
def test_sharded_mesh_equals_single_device():
    batch = _batch(seed=2)
    params_after = []
    for mesh_shape in ((1, 1, 1), (2, 2, 2)):
        trainer = _trainer(mesh_shape, loss="ppo_clip", micro_batches=2)
        state = trainer.init_state(_params(), seed=0)
        device_batch = trainer.put_batch(batch)
        for _ in range(3):
            state, _ = trainer.step(state, device_batch)
        if mesh_shape == (2, 2, 2):
            q = state.params["layers"]["attn"]["q"]
            assert q.sharding.spec == trainer.param_shardings["layers"]["attn"]["q"].spec
        params_after.append(jax.device_get(state.params))
    chex.assert_trees_all_close(params_after[1], params_after[0], atol=1e-5)


def test_nonfinite_gradient_is_skipped_and_counted():
    advantage = np.ones(N)
    advantage[3] = np.nan
    trainer = _trainer(loss="reinforce")
    state = trainer.init_state(_params(), seed=0)
    before = jax.device_get(state)
    state, metrics = trainer.step(state, trainer.put_batch(_batch(advantage=advantage)))
    metrics = metrics_lib.to_scalars(metrics)
    assert metrics["train/skipped_nonfinite"] == 1.0
    chex.assert_trees_all_equal(jax.device_get(state.params), before.params)
    chex.assert_trees_all_equal(jax.device_get(state.opt_state), before.opt_state)
    assert int(state.step) == 1
    # The host-side policy reads exactly this flag (golfjax/train/nonfinite.py).
    nonfinite_lib.NonfiniteGuard("skip", max_consecutive_skips=1).check(1, metrics)
    with pytest.raises(FloatingPointError, match="train step 1: non-finite"):
        nonfinite_lib.NonfiniteGuard("raise", max_consecutive_skips=1).check(1, metrics)


def test_step_is_traced_once(monkeypatch):
    monkeypatch.setattr(step_lib, "train_step", chex.assert_max_traces(step_lib.train_step, n=1))
    trainer = _trainer(loss="gspo")
    state = trainer.init_state(_params(), seed=0)
    for seed in range(3):
        state, metrics = trainer.step(state, trainer.put_batch(_batch(seed=seed)))
    assert int(state.step) == 3
    chex.assert_tree_all_finite(metrics)


def test_old_and_ref_logprobs_are_recomputed():
    trainer = _trainer()
    params = _params()
    state = trainer.init_state(params, seed=0)
    batch = trainer.put_batch(_batch())
    recomputed = trainer.with_old_logprobs(state, batch)
    expected, _ = step_lib.compute_logprobs(params, _batch(), model_config=MODEL)
    np.testing.assert_allclose(recomputed.old_logp_NxT, expected, atol=1e-6)
    with_ref = trainer.with_ref_logprobs(_params(seed=1), batch)
    assert not np.allclose(with_ref.ref_logp_NxT, recomputed.old_logp_NxT)


def test_bad_configuration_names_the_field():
    # The step takes the run's `train` section, validated where it is built.
    with pytest.raises(ValueError, match="config.train.loss: unknown loss 'ppo'"):
        run_config.build(run_config.TrainSection, {"loss": "ppo"}, "config.train")
    with pytest.raises(ValueError, match="config.train.kl_estimator='low_var_kl'; expected one of k1, k2, k3"):
        run_config.build(run_config.TrainSection, {"kl_estimator": "low_var_kl"}, "config.train")
    with pytest.raises(ValueError, match="config.train.micro_batches=0; expected >= 1"):
        run_config.build(run_config.TrainSection, {"micro_batches": 0}, "config.train")
    trainer = _trainer(micro_batches=3)
    state = trainer.init_state(_params(), seed=0)
    with pytest.raises(ValueError, match="batch has 8 rows, not divisible by micro_batches=3"):
        trainer.step(state, trainer.put_batch(_batch()))


def _golf_parts():
    # GOLF's two parts: part 0 holds an injected row (row 1; micro-batch 1 of
    # 2), part 1 (the refinement groups) none.
    return (_batch(seed=5, off_policy_rows=(1,), n=4, p=3), _batch(seed=6, off_policy_rows=(), n=4, p=9))


def test_offpolicy_diagnostics_average_over_the_injected_tokens():
    # The off-policy term's aux is a mean over injected tokens; parts and
    # micro-batches without any must not dilute it (it read half the true
    # value when averaged over GOLF's two parts).
    parts = _golf_parts()
    trainer = _trainer(loss="ppo_clip", micro_batches=2)
    state = trainer.init_state(_params(), seed=0)
    _, metrics = trainer.step(state, trainer.put_batch(parts))
    logp, _ = step_lib.compute_logprobs(_params(), parts[0], model_config=MODEL)
    off = parts[0].response_mask_NxT & parts[0].off_policy_mask_NxT
    expected = np.exp(np.asarray(logp, np.float64))[off].mean()
    np.testing.assert_allclose(metrics["loss/offpolicy_prob_mean"], expected, rtol=1e-5)
    # The on-policy loss's aux averages over the on-policy tokens of both parts.
    k3 = []
    for part in parts:
        logp, _ = step_lib.compute_logprobs(_params(), part, model_config=MODEL)
        log_r = np.asarray(logp, np.float64) - np.asarray(part.old_logp_NxT, np.float64)
        k3.append((np.expm1(log_r) - log_r)[part.response_mask_NxT & ~part.off_policy_mask_NxT])
    np.testing.assert_allclose(metrics["loss/approx_kl"], np.concatenate(k3).mean(), rtol=1e-4)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_gradient_shares_are_each_pieces_gradient(micro_batches):
    # Reference: the full objective's three pieces written out with the loss
    # library on each part's log-probs, each differentiated on its own.
    parts = _golf_parts()
    loss_cfg = losses.LossConfig(agg="seq-mean-token-sum-norm")
    trainer = trainer_lib.Trainer(
        MODEL, run_config.TrainSection(loss="ppo_clip", micro_batches=micro_batches), loss_cfg,
        state_lib.OptimizerConfig(lr=1e-2), sharding.make_mesh(1, 1, 1, devices=np.array(jax.devices()[:1])),
        part_names=("original", "refinement"))
    cfg = trainer.loss_cfg
    masks = [(p.response_mask_NxT & ~p.off_policy_mask_NxT, p.response_mask_NxT & p.off_policy_mask_NxT)
             for p in parts]
    count = sum(float(losses.LOSSES["ppo_clip"](p.old_logp_NxT, p.old_logp_NxT, p.advantage_N, on, cfg)[0].count
                      + losses.OFF_POLICY_LOSSES["shaping"](p.old_logp_NxT, p.behaviour_logp_NxT, p.advantage_N,
                                                            off, cfg)[0].count)
                for p, (on, off) in zip(parts, masks))

    def piece(params, which):
        total = 0.0
        for i, (part, (on, off)) in enumerate(zip(parts, masks)):
            logp, _ = step_lib.compute_logprobs(params, part, model_config=MODEL)
            if which == i:
                total += losses.LOSSES["ppo_clip"](logp, part.old_logp_NxT, part.advantage_N, on, cfg)[0].sum
            if which == "off":
                total += losses.OFF_POLICY_LOSSES["shaping"](
                    logp, part.behaviour_logp_NxT, part.advantage_N, off, cfg)[0].sum
        return total / count

    grads = {name: jax.grad(piece)(_params(), which)
             for name, which in (("off_policy", "off"), ("original", 0), ("refinement", 1))}
    whole = jax.tree.map(lambda *g: sum(g), *grads.values())
    state = trainer.init_state(_params(), seed=0)
    _, metrics = trainer.step(state, trainer.put_batch(parts))
    metrics = metrics_lib.to_scalars(metrics)
    np.testing.assert_allclose(metrics["grad_norm"], float(optax_norm(whole)), rtol=1e-5)
    for name, g in grads.items():
        np.testing.assert_allclose(metrics[f"grad/{name}_norm"], float(optax_norm(g)), rtol=1e-4, err_msg=name)
        share = float(tree_dot(g, whole) / tree_dot(whole, whole))
        np.testing.assert_allclose(metrics[f"grad/{name}_share"], share, rtol=1e-4, atol=1e-6, err_msg=name)
    assert metrics["grad/off_policy_norm"] > 0
    np.testing.assert_allclose(sum(metrics[f"grad/{n}_share"] for n in grads), 1.0, rtol=1e-5)


def test_gradient_shares_leave_the_update_and_a_single_batch_alone():
    # Splitting the backward pass changes what is measured, not the update;
    # a single batch (GRPO's) has no pieces to report.
    parts = _golf_parts()
    after = []
    for grad_shares in (True, False):
        trainer = _trainer(loss="ppo_clip", micro_batches=2, grad_shares=grad_shares)
        state, metrics = trainer.step(trainer.init_state(_params(), seed=0), trainer.put_batch(parts))
        assert ("grad/part0_share" in metrics) == grad_shares
        after.append(jax.device_get(state.params))
    chex.assert_trees_all_close(after[0], after[1], atol=1e-6)
    trainer = _trainer(loss="ppo_clip")
    _, metrics = trainer.step(trainer.init_state(_params(), seed=0), trainer.put_batch(_batch()))
    assert not [k for k in metrics if k.startswith("grad/")]


def optax_norm(tree):
    return np.sqrt(tree_dot(tree, tree))


def tree_dot(a, b):
    return sum(float(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
