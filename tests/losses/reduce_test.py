"""Tests for golfjax/losses/reduce.py: Weighted and the aggregation modes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from golfjax.losses import reduce
from tests.losses import reference


class AggregateTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*reduce.AGGREGATIONS)
    def test_matches_reference(self, agg):
        rng = np.random.default_rng(0)
        loss = rng.normal(size=(5, 7)).astype(np.float32)
        mask = np.arange(7)[None, :] < np.array([7, 3, 0, 1, 5])[:, None]
        weighted = self.variant(reduce.aggregate, static_argnums=2)(loss, mask, agg)
        chex.assert_shape([weighted.sum, weighted.count], ())
        chex.assert_type([weighted.sum, weighted.count], jnp.float32)
        value, _ = reference.aggregate(loss.astype(np.float64), mask, agg)
        np.testing.assert_allclose(weighted.value, value, rtol=1e-6)

    def test_worked_example(self):
        # Rows [1, 2, _] and [3, _, _] (T = 3):
        #   token-mean              (1 + 2 + 3) / 3            = 2
        #   seq-mean-token-mean     ((1 + 2) / 2 + 3 / 1) / 2  = 2.25
        #   seq-mean-token-sum      ((1 + 2) + 3) / 2          = 3
        #   seq-mean-token-sum-norm ((1 + 2) / 3 + 3 / 3) / 2  = 1
        loss = jnp.array([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
        mask = jnp.array([[1, 1, 0], [1, 0, 0]])
        expected = {
            "token-mean": 2.0,
            "seq-mean-token-mean": 2.25,
            "seq-mean-token-sum": 3.0,
            "seq-mean-token-sum-norm": 1.0,
        }
        for agg, value in expected.items():
            self.assertAlmostEqual(float(reduce.aggregate(loss, mask, agg).value), value, places=6)

    @parameterized.parameters(*reduce.AGGREGATIONS)
    def test_nan_at_padding_does_not_leak(self, agg):
        loss = jnp.array([[1.0, jnp.nan], [jnp.inf, -jnp.inf]])
        mask = jnp.array([[1, 0], [0, 0]])
        # One valid token of value 1: every mode gives 1, except the Dr.GRPO
        # norm, which divides the row sum by the padded length T = 2.
        scale = 0.5 if agg == "seq-mean-token-sum-norm" else 1.0
        weighted = reduce.aggregate(loss, mask, agg)
        self.assertEqual(float(weighted.value), scale)
        grad = jax.grad(lambda l: reduce.aggregate(l, mask, agg).value)(loss)
        np.testing.assert_array_equal(grad, [[scale, 0.0], [0.0, 0.0]])

    def test_weighted_adds_and_handles_empty(self):
        total = reduce.Weighted(jnp.array(3.0), jnp.array(2.0)) + reduce.Weighted(
            jnp.array(5.0), jnp.array(2.0)
        )
        self.assertEqual(float(total.value), 2.0)
        self.assertEqual(float(reduce.Weighted.zero().value), 0.0)
        # A pytree: it passes through jit and tree maps.
        doubled = jax.jit(lambda w: jax.tree.map(lambda x: 2 * x, w))(total)
        self.assertEqual(float(doubled.sum), 16.0)

    def test_unknown_mode_and_bad_shapes(self):
        with self.assertRaisesRegex(ValueError, "agg='mean'.*token-mean"):
            reduce.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), "mean")
        with self.assertRaisesRegex(ValueError, "agg='loss-default'.*LossConfig.for_loss"):
            reduce.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), "loss-default")
        with self.assertRaisesRegex(ValueError, r"loss_NxT has shape \(2, 3\) and mask_NxT \(2, 4\)"):
            reduce.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 4)), "token-mean")
