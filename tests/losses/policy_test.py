"""Tests for every entry of LOSSES (policy.py, plus VESPO through the registry)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from golfjax.losses import LOSSES
from golfjax.losses import AGGREGATIONS
from golfjax.losses import LossConfig
from tests.losses import reference

ALL_LOSSES = tuple(LOSSES)
# Losses whose gradient at ratio 1 must equal REINFORCE's (docs/algorithms.md).
RATIO_ONE_LOSSES = ("ppo_clip", "cispo", "vespo", "sapo")


def _value_and_grad(name, cfg, logp, old, adv, mask, sampler=None):
    def value(lp):
        weighted, _ = LOSSES[name](lp, old, adv, mask, cfg, sampler)
        return weighted.value

    return value(logp), jax.grad(value)(logp)


class PolicyLossTest(parameterized.TestCase):

    @parameterized.product(name=ALL_LOSSES, agg=AGGREGATIONS)
    def test_matches_float64_reference(self, name, agg):
        logp, old, adv, mask = reference.random_batch(seed=hash(name) % 1000)
        cfg = LossConfig(agg=agg)
        value, grad = _value_and_grad(name, cfg, logp, old, adv, mask)
        ref_value, ref_grad = reference.loss_and_grad(
            reference.TOKEN_LOSSES[name], logp, old, adv, mask, agg
        )
        np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-6)

    @parameterized.parameters(*ALL_LOSSES)
    def test_default_config_aggregates_as_the_loss_reference_does(self, name):
        # LossConfig() leaves agg at "loss-default": GSPO and SAPO must then
        # aggregate seq-mean-token-mean (verl, TRL), every other loss token-mean.
        logp, old, adv, mask = reference.random_batch(seed=hash(name) % 1000 + 1)
        value, grad = _value_and_grad(name, LossConfig(), logp, old, adv, mask)
        ref_value, ref_grad = reference.loss_and_grad(
            reference.TOKEN_LOSSES[name], logp, old, adv, mask,
            reference.DEFAULT_AGG[name],
        )
        np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-6)

    @parameterized.parameters(*ALL_LOSSES)
    def test_finite_for_huge_log_ratios_and_empty_rows(self, name):
        logp, _, adv, mask = reference.random_batch(seed=3)
        sign = np.where(np.arange(logp.shape[1]) % 2 == 0, 1.0, -1.0)
        old = (logp + 1e4 * sign[None, :]).astype(np.float32)  # ratios e^+-1e4
        for agg in AGGREGATIONS:
            cfg = LossConfig(agg=agg)
            value, grad = _value_and_grad(name, cfg, logp, old, adv, mask)
            chex.assert_tree_all_finite((value, grad))

    @parameterized.parameters(*ALL_LOSSES)
    def test_all_masked_batch_is_zero_not_nan(self, name):
        logp, old, adv, mask = reference.random_batch(seed=4)
        empty = np.zeros_like(mask)
        value, grad = _value_and_grad(name, LossConfig(), logp, old, adv, empty)
        self.assertEqual(float(value), 0.0)
        np.testing.assert_array_equal(grad, np.zeros_like(grad))

    @parameterized.parameters(*ALL_LOSSES)
    def test_no_gradient_to_old_or_sampler_logp_or_padding(self, name):
        logp, old, adv, mask = reference.random_batch(seed=5)
        sampler = old + 0.05
        cfg = LossConfig(tis=True, mis="token", mis_cap=4.0)

        def value(lp, o, s):
            return LOSSES[name](lp, o, adv, mask, cfg, s)[0].value

        g_logp, g_old, g_sampler = jax.grad(value, argnums=(0, 1, 2))(
            logp, old, sampler
        )
        np.testing.assert_array_equal(g_old, np.zeros_like(g_old))
        np.testing.assert_array_equal(g_sampler, np.zeros_like(g_sampler))
        # Padded positions hold garbage (see random_batch); exactly zero there.
        np.testing.assert_array_equal(g_logp[~mask], 0.0)
        self.assertTrue(np.any(g_logp[mask] != 0.0))

    @parameterized.product(name=RATIO_ONE_LOSSES, agg=AGGREGATIONS)
    def test_ratio_one_gradient_equals_reinforce(self, name, agg):
        # At old_logp == logp every ratio is 1, so:
        #   ppo_clip: rho = 1 is inside [0.8, 1.2], dl/dlogp = -A rho = -A;
        #   cispo:    the detached weight clip(1) = 1, dl/dlogp = -A;
        #   vespo:    s_i = 0, W = 1, phi(1) = 1^k e^0 = 1, dl/dlogp = -A;
        #   sapo:     dl/dlogp = -A 4 s(1-s) rho with s = sigmoid(0) = 1/2: -A;
        # which is REINFORCE's -A under the same aggregation weights.
        logp, _, adv, mask = reference.random_batch(seed=6)
        cfg = LossConfig(agg=agg)
        _, grad = _value_and_grad(name, cfg, logp, logp, adv, mask)
        _, grad_reinforce = _value_and_grad("reinforce", cfg, logp, logp, adv, mask)
        np.testing.assert_allclose(grad, grad_reinforce, rtol=1e-6, atol=1e-7)

    @parameterized.product(name=ALL_LOSSES, agg=AGGREGATIONS)
    def test_two_halves_accumulate_to_the_whole(self, name, agg):
        logp, old, adv, mask = reference.random_batch(seed=7, batch=8)
        cfg = LossConfig(agg=agg)
        fn = LOSSES[name]

        def whole(lp):
            return fn(lp, old, adv, mask, cfg)[0].value

        def halves(lp):
            first, _ = fn(lp[:3], old[:3], adv[:3], mask[:3], cfg)
            second, _ = fn(lp[3:], old[3:], adv[3:], mask[3:], cfg)
            return (first + second).value

        np.testing.assert_allclose(halves(logp), whole(logp), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            jax.grad(halves)(logp), jax.grad(whole)(logp), rtol=1e-6, atol=1e-7
        )

    @parameterized.parameters(*ALL_LOSSES)
    def test_bfloat16_logp_computes_in_float32(self, name):
        logp, old, adv, mask = reference.random_batch(seed=8)
        weighted, aux = LOSSES[name](
            jnp.asarray(logp, jnp.bfloat16), old, adv, mask, LossConfig()
        )
        chex.assert_type([weighted.sum, weighted.count], jnp.float32)
        chex.assert_shape([weighted.sum, weighted.count, *(a.value for a in aux.values())], ())

    def test_dual_clip_bounds_negative_advantage_loss(self):
        # A = -1 and rho = e^3 ~ 20: unclipped loss -A rho = 20 exceeds the
        # dual-clip bound -A c = 3, so the token's loss is exactly 3.
        logp = jnp.zeros((1, 1))
        old = jnp.full((1, 1), -3.0)
        adv = jnp.array([-1.0])
        mask = jnp.ones((1, 1), bool)
        weighted, aux = LOSSES["ppo_clip"](logp, old, adv, mask, LossConfig())
        self.assertAlmostEqual(float(weighted.value), 3.0, places=6)
        self.assertEqual(float(aux["dual_clip_frac"].value), 1.0)
        no_dual, _ = LOSSES["ppo_clip"](
            logp, old, adv, mask, LossConfig(dual_clip=None)
        )
        self.assertAlmostEqual(float(no_dual.value), float(np.exp(3.0)), places=3)

    def test_gspo_has_no_dual_clip(self):
        # The same token as above: a sequence ratio e^3 with A = -1 keeps its
        # loss -A s = e^3 even though LossConfig.dual_clip is 3 (verl, TRL).
        logp = jnp.zeros((1, 1))
        old = jnp.full((1, 1), -3.0)
        adv = jnp.array([-1.0])
        mask = jnp.ones((1, 1), bool)
        weighted, aux = LOSSES["gspo"](logp, old, adv, mask, LossConfig(dual_clip=3.0))
        self.assertAlmostEqual(float(weighted.value), float(np.exp(3.0)), places=3)
        self.assertNotIn("dual_clip_frac", aux)

    def test_cispo_clips_the_weight_from_above_only(self):
        # Ratios e^-1, e^0.5, e^1 and e^2 (about 0.37, 1.65, 2.72, 7.39): the
        # first three are weights as they are (no lower bound, no PPO range),
        # the last is capped at cispo_max_weight = 5.
        log_ratio = jnp.array([[-1.0, 0.5, 1.0, 2.0]])
        old = jnp.full((1, 4), -2.0)
        adv = jnp.array([1.0])
        mask = jnp.ones((1, 4), bool)
        cfg = LossConfig()
        self.assertEqual(cfg.cispo_max_weight, 5.0)
        grad, aux = jax.grad(
            lambda lp: (lambda w, a: (w.value, a))(
                *LOSSES["cispo"](lp, old, adv, mask, cfg)), has_aux=True,
        )(old + log_ratio)
        weights = np.minimum(np.exp([-1.0, 0.5, 1.0, 2.0]), 5.0)
        np.testing.assert_allclose(grad, -weights[None, :] / 4, rtol=1e-6)
        self.assertAlmostEqual(float(aux["clip_frac"].value), 0.25)
        # verl's example bound, 1 + 0.2: ratios above 1.2 are capped there.
        grad_verl = jax.grad(lambda lp: LOSSES["cispo"](
            lp, old, adv, mask, LossConfig(cispo_max_weight=1.2))[0].value)(old + log_ratio)
        np.testing.assert_allclose(grad_verl, [[-np.exp(-1.0) / 4, -0.3, -0.3, -0.3]], rtol=1e-6)


class MismatchCorrectionTest(parameterized.TestCase):

    @parameterized.parameters("ppo_clip", "cispo", "reinforce", "sapo", "gspo")
    def test_token_tis_multiplies_the_token_loss(self, name):
        logp, old, adv, mask = reference.random_batch(seed=9)
        sampler = (old + np.random.default_rng(0).normal(0, 0.5, old.shape)).astype(
            np.float32
        )
        cfg = LossConfig(tis=True, tis_cap=2.0)
        value, grad = _value_and_grad(name, cfg, logp, old, adv, mask, sampler)
        loss, dloss = reference.TOKEN_LOSSES[name](
            *[np.asarray(a, np.float64) for a in (logp, old, adv, mask)]
        )
        w = reference.tis_weights(old.astype(np.float64), sampler, cap=2.0)
        ref_value, weights = reference.aggregate(
            loss * w, mask, reference.DEFAULT_AGG[name]
        )
        np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(grad, weights * dloss * w, rtol=2e-5, atol=1e-6)

    def test_token_mis_rejects_tokens_outside_the_bounds(self):
        # Ratios old/sampler of e^1 (outside [1/2, 2]) are rejected; e^0.5 kept.
        logp = jnp.zeros((1, 4))
        old = jnp.zeros((1, 4))
        sampler = jnp.array([[0.0, -1.0, -0.5, 1.0]])
        adv = jnp.array([1.0])
        mask = jnp.ones((1, 4), bool)
        cfg = LossConfig(mis="token", mis_cap=2.0, agg="token-mean")
        grad = jax.grad(
            lambda lp: LOSSES["reinforce"](lp, old, adv, mask, cfg, sampler)[0].value
        )(logp)
        # Two kept tokens out of four: each gets -A / 2.
        np.testing.assert_allclose(grad, [[-0.5, 0.0, -0.5, 0.0]])
        _, aux = LOSSES["reinforce"](logp, old, adv, mask, cfg, sampler)
        self.assertAlmostEqual(float(aux["mis_reject_frac"].value), 0.5)

    def test_sequence_mis_rejects_whole_rows(self):
        # Row 0's product ratio is e^(0.3 * 3) = e^0.9 > 2: rejected whole.
        # Row 1's is e^(0.3 - 0.3 + 0.1) = e^0.1: kept.
        old = jnp.zeros((2, 3))
        sampler = jnp.array([[-0.3, -0.3, -0.3], [-0.3, 0.3, -0.1]])
        mask = jnp.ones((2, 3), bool)
        cfg = LossConfig(mis="sequence", mis_cap=2.0)
        grad = jax.grad(
            lambda lp: LOSSES["reinforce"](
                lp, old, jnp.ones(2), mask, cfg, sampler
            )[0].value
        )(old)
        np.testing.assert_allclose(grad, [[0, 0, 0], [-1 / 3] * 3], rtol=1e-6)

    def test_correction_without_sampler_logp_is_an_error(self):
        logp, old, adv, mask = reference.random_batch(seed=10)
        with self.assertRaisesRegex(ValueError, "sampler_logp_NxT"):
            LOSSES["ppo_clip"](logp, old, adv, mask, LossConfig(tis=True))


class JitVariantsTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*ALL_LOSSES)
    def test_jit_and_eager_agree_with_the_reference(self, name):
        logp, old, adv, mask = reference.random_batch(seed=11)
        cfg = LossConfig(agg="seq-mean-token-mean")
        fn = self.variant(functools.partial(LOSSES[name], cfg=cfg))
        weighted, aux = fn(logp, old, adv, mask)
        chex.assert_shape([weighted.sum, weighted.count], ())
        chex.assert_tree_all_finite((weighted, aux))
        ref_value, _ = reference.loss_and_grad(
            reference.TOKEN_LOSSES[name], logp, old, adv, mask, cfg.agg
        )
        np.testing.assert_allclose(weighted.value, ref_value, rtol=2e-5, atol=1e-6)
        # seq-mean counts the rows with a valid token: 5 of 6 (row 1 is empty).
        self.assertEqual(float(weighted.count), 5.0)


class BadInputTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("old_logp", 1, (6, 8), "old_logp_NxT"),
        ("adv", 2, (5,), "adv_N"),
        ("mask", 3, (6,), "mask_NxT"),
    )
    def test_shape_mismatch_names_the_argument(self, index, shape, arg):
        args = list(reference.random_batch(seed=12))
        args[index] = np.zeros(shape, args[index].dtype)
        for name in ALL_LOSSES:
            with self.assertRaisesRegex(ValueError, rf"{arg} has shape .*expected"):
                LOSSES[name](*args, LossConfig())

    def test_sampler_logp_shape_is_checked(self):
        logp, old, adv, mask = reference.random_batch(seed=13)
        with self.assertRaisesRegex(ValueError, r"sampler_logp_NxT .*\(6, 9\)"):
            LOSSES["vespo"](logp, old, adv, mask, LossConfig(), old[:, :3])

    def test_logp_must_be_2d(self):
        with self.assertRaisesRegex(ValueError, r"logp_NxT has shape \(9,\)"):
            LOSSES["ppo_clip"](
                np.zeros(9), np.zeros(9), np.zeros(1), np.ones(9), LossConfig()
            )
