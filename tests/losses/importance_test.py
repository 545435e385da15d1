"""Tests for golfjax/losses/importance.py: the VESPO kernel and loss, TIS, MIS, ESS."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from golfjax.losses import importance
from golfjax.losses import LossConfig
from tests.losses import reference

# docs/algorithms.md#vespo reference values, (W, phi(W)), default (k, lam) per sign.
PHI_POSITIVE = [(0.5, 1.120), (1.2, 0.790), (2.0, 0.199), (3.0, 0.022), (2 / 3, 1.208)]
PHI_NEGATIVE = [(0.5, 0.340), (1.2, 1.158), (2.0, 1.083), (3.0, 0.495), (1.5, 1.242)]


class KernelTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("positive", 2.0, 3.0, PHI_POSITIVE),
        ("negative", 3.0, 2.0, PHI_NEGATIVE),
    )
    def test_phi_matches_the_reference_values(self, k, lam, table):
        w = jnp.array([w for w, _ in table])
        phi = self.variant(importance.vespo_kernel)(w, k, lam)
        chex.assert_shape(phi, w.shape)
        np.testing.assert_allclose(phi, [p for _, p in table], atol=5e-4)
        # phi(1) = 1^k e^(lam * 0) = 1 for every (k, lam).
        self.assertAlmostEqual(float(self.variant(importance.vespo_kernel)(1.0, k, lam)), 1.0)

    @parameterized.named_parameters(("positive", 2.0, 3.0), ("negative", 3.0, 2.0))
    def test_peak_is_at_k_over_lam(self, k, lam):
        w = jnp.linspace(0.05, 4.0, 4000)
        phi = importance.vespo_kernel(w, k, lam)
        self.assertAlmostEqual(float(w[jnp.argmax(phi)]), k / lam, delta=1e-3)

    def test_extreme_weights_are_finite(self):
        # W = e^+-20 are the extremes that the clipped log-weight allows.
        phi = importance.vespo_kernel(jnp.array([0.0, np.exp(-20.0), np.exp(20.0)]), 2.0, 3.0)
        chex.assert_tree_all_finite(phi)
        np.testing.assert_allclose(phi, reference.phi(np.array([0.0, np.exp(-20.0), np.exp(20.0)]), 2.0, 3.0), atol=1e-12)


class VespoTest(parameterized.TestCase):

    def test_log_weight_is_not_length_normalised(self):
        # Three tokens each with log-ratio 0.1: s = 0.3 (the product ratio), not
        # 0.1 (GSPO's geometric mean); the padded fourth token does not count.
        logp = jnp.array([[0.1, 0.1, 0.1, 5.0]])
        old = jnp.zeros((1, 4))
        mask = jnp.array([[1, 1, 1, 0]], bool)
        s = importance.sequence_log_weight(logp, old, mask)
        np.testing.assert_allclose(s, [0.3], rtol=1e-6)

    def test_log_weight_is_clipped(self):
        logp = jnp.full((2, 5), 0.0)
        old = jnp.array([[-10.0] * 5, [10.0] * 5])
        s = importance.sequence_log_weight(logp, old, jnp.ones((2, 5), bool))
        np.testing.assert_array_equal(s, [20.0, -20.0])

    def test_tis_folds_into_the_sequence_weight(self):
        # With TIS the weight is pi / pi_sampler: s = sum(logp - old) + sum(log w)
        # where w = min(exp(old - sampler), 2). Here old - sampler = 0.2 per token
        # (w = e^0.2 < 2) and logp - old = 0.1, so s = 3 * 0.3 = 0.9.
        logp = jnp.full((1, 3), -1.0)
        old = logp - 0.1
        sampler = old - 0.2
        adv = jnp.array([1.0])
        mask = jnp.ones((1, 3), bool)
        cfg = LossConfig(tis=True)
        grad = jax.grad(lambda lp: importance.vespo(lp, old, adv, mask, cfg, sampler)[0].value)(logp)
        phi = reference.phi(np.exp(0.9), 2.0, 3.0)
        # token-mean over 3 tokens: dL/dlogp_t = -phi A / 3 (phi not multiplied by w again).
        np.testing.assert_allclose(grad, np.full((1, 3), -phi / 3), rtol=1e-5)
        _, aux = importance.vespo(logp, old, adv, mask, cfg, sampler)
        np.testing.assert_allclose(aux["log_w_pos_mean"].value, 0.9, rtol=1e-5)

    @parameterized.parameters("token-mean", "seq-mean-token-sum-norm")
    def test_tis_matches_reference(self, agg):
        logp, old, adv, mask = reference.random_batch(seed=21, spread=0.05)
        sampler = (old + np.random.default_rng(1).normal(0, 0.05, old.shape)).astype(np.float32)
        cfg = LossConfig(tis=True, agg=agg)
        grad = jax.grad(lambda lp: importance.vespo(lp, old, adv, mask, cfg, sampler)[0].value)(logp)
        tis_log_w = np.log(reference.tis_weights(old.astype(np.float64), sampler.astype(np.float64)))
        _, ref_grad = reference.loss_and_grad(
            reference.vespo_tokens, logp, old, adv, mask, agg, tis_log_w=tis_log_w
        )
        np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-7)

    def test_aux_splits_by_advantage_sign(self):
        # Row 0: A = +1, s = 3 * 0.2 = 0.6; row 1: A = -1, s = -0.3; row 2 empty.
        logp = jnp.array([[0.2, 0.2, 0.2], [-0.1, -0.1, -0.1], [9.0, 9.0, 9.0]])
        old = jnp.zeros((3, 3))
        adv = jnp.array([1.0, -1.0, 1.0])
        mask = jnp.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
        _, aux = importance.vespo(logp, old, adv, mask, LossConfig())
        np.testing.assert_allclose(aux["log_w_pos_mean"].value, 0.6, rtol=1e-5)
        np.testing.assert_allclose(aux["log_w_neg_mean"].value, -0.3, rtol=1e-5)
        np.testing.assert_allclose(aux["phi_pos_mean"].value, reference.phi(np.exp(0.6), 2, 3), rtol=1e-5)
        np.testing.assert_allclose(aux["phi_neg_mean"].value, reference.phi(np.exp(-0.3), 3, 2), rtol=1e-5)
        np.testing.assert_allclose(aux["pos_frac"].value, 0.5)

    def test_non_finite_phi_becomes_zero(self):
        # lam * W with W = e^20 is ~1.4e9 in the exponent: phi underflows to 0 and
        # the token's gradient is exactly zero rather than NaN.
        logp = jnp.zeros((1, 2))
        old = jnp.full((1, 2), -50.0)
        grad = jax.grad(
            lambda lp: importance.vespo(lp, old, jnp.ones(1), jnp.ones((1, 2), bool))[0].value
        )(logp)
        np.testing.assert_array_equal(grad, np.zeros((1, 2)))


class MismatchPrimitivesTest(parameterized.TestCase):

    def test_tis_weights_are_truncated_and_detached(self):
        old = jnp.array([[0.0, 0.0, 0.0]])
        sampler = jnp.array([[0.0, -0.5, -3.0]])  # ratios 1, e^0.5, e^3 -> capped at 2
        w = importance.tis_weights(old, sampler, cap=2.0)
        np.testing.assert_allclose(w, [[1.0, np.exp(0.5), 2.0]], rtol=1e-6)
        grad = jax.grad(lambda o: importance.tis_weights(o, sampler).sum())(old)
        np.testing.assert_array_equal(grad, np.zeros_like(grad))

    def test_mis_mask_levels(self):
        old = jnp.zeros((2, 2))
        sampler = jnp.array([[0.0, -1.0], [0.3, 0.3]])
        mask = jnp.ones((2, 2), bool)
        # Token ratios: [1, e], [e^-0.3, e^-0.3]; cap 2 rejects only e.
        np.testing.assert_array_equal(
            importance.mis_mask(old, sampler, mask, 2.0, "token"), [[1, 0], [1, 1]]
        )
        # Product ratios: e^1 = 2.72 (rejected) and e^-0.6 = 0.55 (kept, > 1/2).
        np.testing.assert_array_equal(
            importance.mis_mask(old, sampler, mask, 2.0, "sequence"), [[0, 0], [1, 1]]
        )
        with self.assertRaisesRegex(ValueError, "level='geometric'"):
            importance.mis_mask(old, sampler, mask, 2.0, "geometric")

    def test_effective_sample_size(self):
        valid = jnp.array([True, True, True, True, False])
        # Uniform weights: ESS = 1. Weights (1, 1, 1, 3) over 4 rows: (6)^2 / (4 * 12) = 0.75.
        self.assertAlmostEqual(float(importance.effective_sample_size(jnp.zeros(5), valid)), 1.0, places=6)
        log_w = jnp.log(jnp.array([1.0, 1.0, 1.0, 3.0, 100.0]))
        self.assertAlmostEqual(float(importance.effective_sample_size(log_w, valid)), 0.75, places=6)
        # Huge log-weights do not overflow; an empty set gives 0.
        big = jnp.array([500.0, 500.0, 0.0, 0.0, 0.0])
        self.assertAlmostEqual(float(importance.effective_sample_size(big, valid)), 0.5, places=6)
        self.assertEqual(float(importance.effective_sample_size(big, jnp.zeros(5, bool))), 0.0)
