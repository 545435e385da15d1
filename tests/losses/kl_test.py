"""Tests for golfjax/losses/kl.py: the k1, k2, k3 estimators against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import config as config_lib
from golfjax.losses import kl


def _float64(logp, ref, estimator):
    log_r = np.asarray(ref, np.float64) - np.asarray(logp, np.float64)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    log_r = np.clip(log_r, -20, 20)  # verl's low_var_kl bounds.
    return np.clip(np.exp(log_r) - 1 - log_r, -10, 10)


@pytest.mark.parametrize("estimator", kl.ESTIMATORS)
def test_each_estimator_is_its_formula(estimator):
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.01, 1.0, (4, 7))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, logp.shape)).astype(np.float32)
    got = kl.kl_penalty(jnp.asarray(logp), jnp.asarray(ref), estimator)
    np.testing.assert_allclose(got, _float64(logp, ref, estimator), rtol=1e-5, atol=1e-6)
    # Zero where the policy is its reference, exactly.
    assert np.all(np.asarray(kl.kl_penalty(jnp.asarray(logp), jnp.asarray(logp), estimator)) == 0.0)


def test_k3_is_bounded_as_verl_bounds_it_and_its_gradient_reaches_the_policy_only():
    # log r = 29 (clipped to 20): e^20 - 1 - 20, bounded by 10; log r = -4: e^-4 - 1 + 4.
    logp, ref = jnp.array([[-30.0, -1.0]]), jnp.array([[-1.0, -5.0]])
    np.testing.assert_allclose(kl.kl_penalty(logp, ref, "k3"), [[10.0, np.exp(-4) + 3]], rtol=1e-6)
    grad_logp, grad_ref = jax.grad(lambda a, b: kl.kl_penalty(a, b, "k2").sum(), argnums=(0, 1))(
        jnp.array([[-1.0]]), jnp.array([[-2.0]]))
    np.testing.assert_allclose(grad_logp, [[1.0]])  # d/dlogp (logp - ref)^2 / 2
    np.testing.assert_array_equal(grad_ref, [[0.0]])  # The reference is frozen.


def test_the_config_accepts_the_estimators_and_names_a_bad_one():
    assert config_lib.KL_ESTIMATORS == kl.ESTIMATORS == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match=r"kl_estimator='low_var_kl'; expected one of k1, k2, k3"):
        kl.kl_penalty(jnp.zeros((1, 1)), jnp.zeros((1, 1)), "low_var_kl")
