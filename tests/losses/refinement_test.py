"""Tests for golfjax/losses/refinement.py: GOLF's off-policy terms."""

import chex
import functools
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from golfjax.losses import AGGREGATIONS
from golfjax.losses import LossConfig
from golfjax.losses import OFF_POLICY_LOSSES
from golfjax.losses import refinement
from tests.losses import reference


class OffPolicyLossTest(chex.TestCase, parameterized.TestCase):

    @parameterized.product(name=tuple(OFF_POLICY_LOSSES), agg=AGGREGATIONS)
    def test_matches_float64_reference(self, name, agg):
        logp, old, adv, mask = reference.random_batch(seed=31)
        fn = OFF_POLICY_LOSSES[name]
        cfg = LossConfig(agg=agg)

        def value(lp):
            return fn(lp, old, adv, mask, cfg)[0].value

        ref_value, ref_grad = reference.loss_and_grad(
            reference.OFF_POLICY_TOKEN_LOSSES[name], logp, old, adv, mask, agg
        )
        np.testing.assert_allclose(value(logp), ref_value, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(jax.grad(value)(logp), ref_grad, rtol=2e-5, atol=1e-6)

    def test_shaping_gradient_formula(self):
        # dL/dlogp_t = -A gamma p / (p + gamma)^2 per token (token-mean over one
        # token per row and one row, so no extra factor). With p = 0.1 = gamma:
        # -A * 0.1 * 0.1 / 0.04 = -0.25 A.
        for p, a, gamma in [(0.1, 1.0, 0.1), (0.9, -2.0, 0.1), (1e-4, 0.5, 0.3)]:
            cfg = LossConfig(shaping_gamma=gamma)
            grad = jax.grad(
                lambda lp: refinement.policy_shaping(
                    lp, lp, jnp.array([a]), jnp.ones((1, 1), bool), cfg
                )[0].value
            )(jnp.log(jnp.array([[p]])))
            expected = -a * gamma * p / (p + gamma) ** 2
            np.testing.assert_allclose(grad, [[expected]], rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*OFF_POLICY_LOSSES)
    def test_shapes_finiteness_and_zero_gradients(self, name):
        logp, old, adv, mask = reference.random_batch(seed=32)
        old = (old + 1e4).astype(np.float32)  # enormous log-ratios
        fn = self.variant(functools.partial(OFF_POLICY_LOSSES[name], cfg=LossConfig()))
        weighted, aux = fn(logp, old, adv, mask)
        chex.assert_shape([weighted.sum, weighted.count, *(a.value for a in aux.values())], ())
        chex.assert_tree_all_finite((weighted, aux))
        g_logp, g_old = jax.grad(
            lambda lp, o: OFF_POLICY_LOSSES[name](lp, o, adv, mask)[0].value, argnums=(0, 1)
        )(logp, old)
        chex.assert_tree_all_finite(g_logp)
        np.testing.assert_array_equal(g_old, np.zeros_like(g_old))
        np.testing.assert_array_equal(g_logp[~mask], 0.0)

    def test_truncated_is_caps_the_weight(self):
        # Ratios e^1 (capped at 2) and e^-1 (kept): gradient -w A / 2 per token.
        logp = jnp.array([[0.0, 0.0]])
        old = jnp.array([[-1.0, 1.0]])
        grad = jax.grad(
            lambda lp: refinement.truncated_is(lp, old, jnp.ones(1), jnp.ones((1, 2), bool))[0].value
        )(logp)
        np.testing.assert_allclose(grad, [[-1.0, -np.exp(-1.0) / 2]], rtol=1e-6)
