"""Tests for golfjax/feedback/injection.py (docs/algorithms.md#golf-injection)."""

import jax
import numpy as np
import pytest

from golfjax import advantages
from golfjax.feedback import injection as inj

G = 8


def rng(seed=0):
    return np.random.default_rng(seed)


def test_success_quota():
    assert inj.success_quota(0.125, 8) == 1  # Math: only all-fail groups.
    assert inj.success_quota(0.25, 8) == 2
    assert inj.success_quota(0.375, 8) == 3
    assert inj.success_quota(0.1, 10) == 1  # 0.1 * 10 = 1.0000000000000002.
    assert inj.success_quota(0.0, 8) == 0


def test_adaptive_threshold():
    success = np.zeros((3, G), bool)
    success[1, 0] = True  # One success: not below quota 1 at threshold 0.125.
    success[2, :2] = True
    refined = np.ones((3, G), bool)
    plan = inj.plan_injection(success, refined, success_threshold=0.125, rng=rng())
    assert [p.prompt_index for p in plan] == [0]
    plan = inj.plan_injection(success, refined, success_threshold=0.25, rng=rng())
    assert [p.prompt_index for p in plan] == [0, 1]  # 1 success < quota 2; 2 is not.
    plan = inj.plan_injection(success, refined, strategy="always", success_threshold=0.125,
                              rng=rng())
    assert [p.prompt_index for p in plan] == [0, 1, 2]
    assert all(not success[p.prompt_index, p.replaced_sample] for p in plan)


def test_only_verified_refinements_and_k():
    success = np.zeros((3, G), bool)
    refined = np.zeros((3, G), bool)
    refined[1, 5] = True
    refined[2, [2, 6, 7]] = True
    plan = inj.plan_injection(success, refined, success_threshold=0.125, n_inject=2, rng=rng())
    # Prompt 0: no verified refinement, nothing injected. Prompt 1: k = min(2, 8, 1) = 1.
    assert [p.prompt_index for p in plan] == [1, 2, 2]
    assert all(refined[p.prompt_index, p.refinement_sample] for p in plan)
    assert len({p.replaced_sample for p in plan if p.prompt_index == 2}) == 2
    # k is also capped by the number of wrong samples.
    success[2, 1:] = True
    plan = inj.plan_injection(success, refined, strategy="always", success_threshold=0.125,
                              n_inject=3, rng=rng())
    assert [(p.prompt_index, p.replaced_sample) for p in plan if p.prompt_index == 2] == [(2, 0)]
    # A group with nothing to refine is never injected.
    plan = inj.plan_injection(np.zeros((3, G), bool), refined, success_threshold=0.125,
                              refinable_B=[True, False, True], rng=rng())
    assert [p.prompt_index for p in plan] == [2]


def test_hybrid_and_determinism():
    success = np.ones((200, G), bool)
    success[:, 0] = False  # Never adaptive at 0.125, so only the coin injects.
    refined = np.ones((200, G), bool)
    plan = inj.plan_injection(success, refined, strategy="hybrid", success_threshold=0.125,
                              rng=rng(1))
    assert 40 <= len(plan) <= 80  # ~ 0.3 * 200.
    assert plan == inj.plan_injection(success, refined, strategy="hybrid",
                                      success_threshold=0.125, rng=rng(1))
    assert all(p.replaced_sample == 0 for p in plan)
    key_rng = inj.rng_from_key(jax.random.fold_in(jax.random.key(0), 3))
    assert isinstance(key_rng, np.random.Generator)
    assert inj.rng_from_key(jax.random.PRNGKey(1)).random() == inj.rng_from_key(
        jax.random.PRNGKey(1)).random()


def test_bad_plan_arguments():
    s = np.zeros((2, G), bool)
    with pytest.raises(ValueError, match="unknown injection strategy"):
        inj.plan_injection(s, s, strategy="never", success_threshold=0.1, rng=rng())
    with pytest.raises(ValueError, match="refinement_success_BxG has shape"):
        inj.plan_injection(s, s[:1], success_threshold=0.1, rng=rng())
    with pytest.raises(ValueError, match="must be a bool"):
        inj.plan_injection(s.astype(float), s, success_threshold=0.1, rng=rng())


def rollout(b, t, fill):
    """B*G rows of response data whose values identify the rollout."""
    n = b * G
    mask = np.zeros((n, t), bool)
    mask[:, :3] = True
    return {
        "tokens_NxT": np.full((n, t), fill, np.int32),
        "response_mask_NxT": mask,
        "behaviour_logp_NxT": np.full((n, t), -float(fill), np.float32),
        "reward_N": np.zeros(n, np.float32) if fill == 1 else np.ones(n, np.float32),
        "texts": [f"r{fill}-{i}" for i in range(n)],
    }


def test_apply_keeps_prompt_marks_off_policy_and_gives_golf_advantages():
    # 7 failures + 1 injected: drgrpo gives +0.875 / -0.125
    # (docs/algorithms.md#golf-advantages).
    original, refinement = rollout(1, 5, fill=1), rollout(1, 5, fill=2)
    refinement["response_mask_NxT"][4, :4] = True  # Row 4 of the refinement is longer.
    plan = [inj.Injection(prompt_index=0, replaced_sample=6, refinement_sample=4)]
    out = inj.apply_injection(plan, original, refinement, group_size=G)
    a = out.arrays
    assert (a["tokens_NxT"][6] == 2).all() and (a["tokens_NxT"][np.arange(G) != 6] == 1).all()
    assert a["texts"][6] == "r2-4" and a["texts"][0] == "r1-0"
    assert (a["behaviour_logp_NxT"][6] == -2).all()
    assert out.off_policy_mask_NxT.sum() == 4 and out.off_policy_mask_NxT[6, :4].all()
    np.testing.assert_array_equal(out.injected_N, np.arange(G) == 6)
    assert (original["tokens_NxT"] == 1).all()  # Inputs untouched.
    # The refinement group keeps its own group id; the injected row stays in group 0.
    reward_N = np.concatenate([a["reward_N"], refinement["reward_N"]])
    group_id_N = np.array([0] * G + [1] * G, np.int32)
    adv = np.asarray(advantages.drgrpo(reward_N, group_id_N))
    expected = np.where(np.arange(G) == 6, 0.875, -0.125)
    np.testing.assert_allclose(adv[:G], expected, atol=1e-6)
    np.testing.assert_allclose(adv[G:], 0.0)
    split = np.asarray(advantages.drgrpo(reward_N, group_id_N,
                                         np.concatenate([out.injected_N, np.zeros(G, bool)])))
    np.testing.assert_allclose(split[:G], np.where(np.arange(G) == 6, 1.0, 0.0), atol=1e-6)


def test_apply_refuses_prompts_and_mismatches():
    original, refinement = rollout(1, 5, 1), rollout(1, 5, 2)
    with pytest.raises(ValueError, match="keeps its ORIGINAL prompt"):
        inj.apply_injection([], {**original, "prompt_tokens_NxP": np.zeros((G, 2))},
                            {**refinement, "prompt_tokens_NxP": np.zeros((G, 2))}, group_size=G)
    short = rollout(1, 4, 2)
    with pytest.raises(ValueError, match="tokens_NxT: original shape"):
        inj.apply_injection([], original, {**refinement, "tokens_NxT": short["tokens_NxT"]},
                            group_size=G)
    with pytest.raises(ValueError, match="outside a batch"):
        inj.apply_injection([inj.Injection(0, 8, 0)], original, refinement, group_size=G)
