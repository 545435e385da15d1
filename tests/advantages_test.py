"""Tests for golfjax/advantages.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from golfjax import advantages


def _reference(name, reward, group, exclude=None, eps=1e-6):
    """Float64 loop-per-row re-derivation of the module docstring's formulas."""
    reward = np.asarray(reward, np.float64)
    exclude = np.zeros(len(reward), bool) if exclude is None else np.asarray(exclude)
    out = np.zeros(len(reward))
    for i in range(len(reward)):
        members = [j for j in range(len(reward)) if group[j] == group[i] and not exclude[j]]
        if name == "rloo":
            others = [j for j in members if j != i]
            out[i] = reward[i] - np.mean(reward[others]) if others else 0.0
        elif name == "drgrpo":
            out[i] = reward[i] - np.mean(reward[members]) if members else 0.0
        else:
            if len(members) >= 2:
                out[i] = (reward[i] - np.mean(reward[members])) / (
                    np.std(reward[members], ddof=1) + eps
                )
    return out


class AdvantagesTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=tuple(advantages.ADVANTAGES), excluded=(False, True))
    def test_matches_reference_on_ragged_interleaved_groups(self, name, excluded):
        rng = np.random.default_rng(0)
        # Non-contiguous, unequal groups with arbitrary ids, incl. a singleton.
        group = np.array([42, 7, 42, 7, 7, 1000, 42, 7, 3, 3])
        reward = rng.normal(size=group.shape).astype(np.float32)
        exclude = rng.random(group.shape) < 0.3 if excluded else None
        fn = self.variant(advantages.ADVANTAGES[name])
        adv = fn(reward, group, exclude)
        chex.assert_shape(adv, group.shape)
        chex.assert_type(adv, jnp.float32)
        chex.assert_tree_all_finite(adv)
        np.testing.assert_allclose(
            adv, _reference(name, reward, group, exclude), rtol=1e-5, atol=1e-6
        )

    def test_golf_injection_example(self):
        # 7 failures and 1 injected success, injected sample counted in the mean:
        # mean = 1/8, so the success gets 1 - 1/8 = +0.875, failures -0.125.
        reward = jnp.array([0.0] * 7 + [1.0])
        group = jnp.zeros(8, jnp.int32)
        np.testing.assert_allclose(
            advantages.drgrpo(reward, group), [-0.125] * 7 + [0.875], rtol=1e-6
        )
        # Split-mean: the injected row is left out of the mean (0 over the 7
        # failures), so it gets +1 and every failure exactly 0.
        injected = jnp.arange(8) == 7
        np.testing.assert_array_equal(
            advantages.drgrpo(reward, group, injected), [0.0] * 7 + [1.0]
        )

    def test_hand_computed_values(self):
        # Group 5: rewards (1, 2, 3): mean 2, unbiased std 1.
        #   grpo (-1, 0, 1) / (1 + 1e-6); rloo: 1 - 2.5, 2 - 2, 3 - 1.5.
        # Group 9: rewards (4, 4): zero spread, grpo 0 / (0 + eps) = 0.
        reward = jnp.array([1.0, 4.0, 2.0, 3.0, 4.0])
        group = jnp.array([5, 9, 5, 5, 9])
        np.testing.assert_allclose(
            advantages.grpo(reward, group), [-1, 0, 0, 1, 0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            advantages.rloo(reward, group), [-1.5, 0, 0, 1.5, 0], rtol=1e-6
        )
        np.testing.assert_allclose(
            advantages.drgrpo(reward, group), [-1, 0, 0, 1, 0], rtol=1e-6
        )

    @parameterized.parameters(*advantages.ADVANTAGES)
    def test_singletons_and_fully_excluded_groups_get_zero(self, name):
        reward = jnp.array([3.0, 1.0, 2.0])
        group = jnp.array([0, 1, 1])
        exclude = jnp.array([False, True, True])
        np.testing.assert_array_equal(advantages.ADVANTAGES[name](reward, group, exclude), 0.0)
        self.assertEqual(float(advantages.ADVANTAGES[name](reward, group)[0]), 0.0)

    def test_large_rewards_keep_precision(self):
        # A one-pass sum of squares would lose the 1e-2 spread next to 1e4.
        reward = jnp.array([1e4, 1e4 + 1e-2, 1e4 - 1e-2, 1e4])
        adv = advantages.grpo(reward, jnp.zeros(4, jnp.int32))
        expected = _reference("grpo", np.asarray(reward), [0] * 4)
        np.testing.assert_allclose(adv, expected, rtol=1e-2)

    def test_no_gradient_through_rewards(self):
        grad = jax.grad(lambda r: advantages.grpo(r, jnp.zeros(4, jnp.int32)).sum())(
            jnp.arange(4.0)
        )
        np.testing.assert_array_equal(grad, np.zeros(4))

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, r"reward_N has shape \(2, 2\)"):
            advantages.grpo(jnp.zeros((2, 2)), jnp.zeros(4, jnp.int32))
        with self.assertRaisesRegex(ValueError, r"group_id_N has shape \(3,\); expected \(4,\)"):
            advantages.rloo(jnp.zeros(4), jnp.zeros(3, jnp.int32))
        with self.assertRaisesRegex(ValueError, r"group_id_N has dtype float32"):
            advantages.drgrpo(jnp.zeros(4), jnp.zeros(4))
        with self.assertRaisesRegex(ValueError, r"exclude_N has shape \(2,\)"):
            advantages.drgrpo(jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.zeros(2, bool))
        with self.assertRaisesRegex(ValueError, r"unknown advantage 'ppo'; expected one of drgrpo, grpo, rloo"):
            advantages.get_advantage("ppo")
