"""Tests for golfjax/loops/golf.py (GOLF's batch source on the tiny model) and
golfjax/loops/golf_replay.py (its injected rows and their replay)."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.configs import golf as golf_config
from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax.loops import golf as golf_lib
from golfjax.loops import golf_replay as replay_lib
from golfjax.loops import rl as rl_lib
from golfjax.types import concat_parts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = golf_config.get_config("smoke")
    config.cold_start.steps = 0
    cfg = config_lib.build(config_lib.RunConfig, config)
    c, params = components_lib.build(cfg, str(tmp_path_factory.mktemp("golf")))
    return cfg, c, params


def test_the_batch_comes_as_two_parts_with_their_own_prompt_lengths(run):
    cfg, c, params = run
    assert isinstance(c.source, golf_lib.GolfSource)
    problems = c.train_problems[: cfg.train.prompts_per_step]
    parts, info = c.source.sample(params, problems, jax.random.PRNGKey(7))
    original, refinement = parts
    n = cfg.train.prompts_per_step * cfg.sampling.group_size
    assert original.num_rows == refinement.num_rows == n
    assert original.prompt_tokens_NxP.shape[1] < refinement.prompt_tokens_NxP.shape[1]
    # Original group b is id b, its refinement group B + b.
    np.testing.assert_array_equal(original.group_id_N, np.arange(n) // cfg.sampling.group_size)
    np.testing.assert_array_equal(refinement.group_id_N, cfg.train.prompts_per_step + original.group_id_N)
    whole = concat_parts(parts, c.tokenizer.pad_id)
    assert whole.num_rows == 2 * n and whole.prompt_tokens_NxP.shape[1] == refinement.prompt_tokens_NxP.shape[1]
    assert info["samples/generated"] == 2 * n
    # The same key draws the same batch.
    again, again_info = c.source.sample(params, problems, jax.random.PRNGKey(7))
    assert again_info == info
    jax.tree.map(np.testing.assert_array_equal, again, parts)


def test_the_judge_critiques_with_the_parameters_it_is_given(run):
    cfg, c, params = run
    seen = []

    def judge(judge_params, prompts, key):
        seen.append(judge_params)
        return ["Critique: check the carry.\nVerdict: incorrect"] * len(prompts)

    source = dataclasses.replace(c.source, critic=None, judge=judge)
    problems = c.train_problems[: cfg.train.prompts_per_step]
    marker = jax.tree.map(lambda x: x, params)  # Another pytree object with the same values.
    source.sample(marker, problems, jax.random.PRNGKey(3))
    assert seen and all(p is marker for p in seen)


def _synthetic_batch(**golf_kwargs):
    """`GolfSource._combine` on hand-made rollouts: B = 2 prompts, G = 4.

    Group 0 failed entirely and receives refinement sample 1 in place of its
    sample 2; group 1 (one success) receives nothing.
    """
    from golfjax import advantages
    from golfjax.decode import Rollout
    from golfjax.feedback import injection
    from golfjax.loops import rl as rl_lib
    from golfjax.rewards.base import Problem

    b, g, t = 2, 4, 3
    n = b * g

    def rollout(offset, prompt_len):
        return Rollout(
            prompt_tokens_NxP=np.ones((n, prompt_len), np.int32), prompt_mask_NxP=np.ones((n, prompt_len), bool),
            tokens_NxT=offset + np.arange(n * t, dtype=np.int32).reshape(n, t),
            response_mask_NxT=np.arange(t)[None] < np.array([3, 2] * (n // 2))[:, None],
            behaviour_logp_NxT=np.full((n, t), -1.0, np.float32), length_N=np.full(n, t, np.int32),
            finish_reason_N=np.zeros(n, np.int32), group_id_N=np.arange(n, dtype=np.int32) // g)

    original, refined = rollout(0, 2), rollout(100, 5)
    reward = np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float32)
    refined_reward = np.array([0, 1, 0, 0, 1, 0, 0, 0], np.float32)
    plan = [injection.Injection(prompt_index=0, replaced_sample=2, refinement_sample=1)]
    injected = injection.apply_injection(
        plan, golf_lib._response_arrays(original, reward), golf_lib._response_arrays(refined, refined_reward),
        group_size=g)
    groups = rl_lib.GroupSource(None, None, None, advantages.get_advantage("drgrpo"))
    source = golf_lib.GolfSource(config_lib.GolfSection(enabled=True, **golf_kwargs), groups)
    parts = source._combine(original, refined, injected, refined_reward, g)
    problems = [Problem(id=7, question="Reverse ab", answer="ba"), Problem(id=9, question="Reverse cd", answer="dc")]
    return parts, injected, problems


def test_knobs_zero_the_failures_of_injected_groups_or_the_refinement_groups():
    (original, refinement), _, _ = _synthetic_batch()
    # Dr.GRPO with the injected row in its group's mean (docs/algorithms.md#golf-advantages).
    np.testing.assert_allclose(original.advantage_N, [-0.25, -0.25, 0.75, -0.25, 0.75, -0.25, -0.25, -0.25])
    np.testing.assert_allclose(refinement.advantage_N, [-0.25, 0.75, -0.25, -0.25, 0.75, -0.25, -0.25, -0.25])
    (original, refinement), _, _ = _synthetic_batch(keep_failure_advantage=False)
    # Only the group that received an injection loses its failures' push-down.
    np.testing.assert_allclose(original.advantage_N, [0, 0, 0.75, 0, 0.75, -0.25, -0.25, -0.25])
    np.testing.assert_allclose(refinement.advantage_N, [-0.25, 0.75, -0.25, -0.25, 0.75, -0.25, -0.25, -0.25])
    (original, refinement), _, _ = _synthetic_batch(train_refinements=False)
    np.testing.assert_allclose(original.advantage_N, [-0.25, -0.25, 0.75, -0.25, 0.75, -0.25, -0.25, -0.25])
    np.testing.assert_array_equal(refinement.advantage_N, np.zeros(8))
    (original, _), _, _ = _synthetic_batch(split_mean=True, keep_failure_advantage=False)
    np.testing.assert_allclose(original.advantage_N, [0, 0, 1, 0, 0.75, -0.25, -0.25, -0.25])


def test_injected_rows_are_the_refinements_as_trained():
    (original, _), injected, problems = _synthetic_batch()
    rows = replay_lib.injected_rows(problems, original, injected.injected_N, 4)
    # Refinement sample 1 of prompt 0 (row 1: tokens 103-105, a 2-token response).
    assert rows == [{"problem_id": 7, "question": "Reverse ab", "response": [103, 104], "advantage": 0.75}]
    assert replay_lib.distinct_demonstrations(rows + rows + [{**rows[0], "question": "Reverse cd"}]) == 2


def test_replay_batch_trains_logged_rows_alone_as_the_rollout_prompted_them(run):
    cfg, c, _ = run
    problems = c.train_problems[:2]
    rows = [{"problem_id": p.id, "question": p.question, "response": [5 + i, 6, 7][: 3 - i], "advantage": 0.75}
            for i, p in enumerate(problems)]
    kwargs = dict(capacity=4, prompt_buckets=cfg.sampling.prompt_buckets, response_len=5,
                  template_kwargs=dict(cfg.task.template_kwargs))
    batch = replay_lib.replay_batch(rows, c.tokenizer, **kwargs)
    prompts = rl_lib.encode_prompts(problems, c.tokenizer, cfg.task.template_kwargs)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        # Left-padded prompt as the rollout encodes it, the logged response right-padded.
        assert np.asarray(batch.prompt_tokens_NxP[i])[np.asarray(batch.prompt_mask_NxP[i])].tolist() == prompt
        assert np.asarray(batch.tokens_NxT[i])[np.asarray(batch.response_mask_NxT[i])].tolist() == row["response"]
    np.testing.assert_array_equal(batch.off_policy_mask_NxT, batch.response_mask_NxT)
    np.testing.assert_array_equal(batch.response_mask_NxT.sum(axis=1), [3, 2, 0, 0])  # Empty rows count nowhere.
    np.testing.assert_allclose(batch.advantage_N, [0.75, 0.75, 0, 0])
    sft = replay_lib.replay_batch(rows, c.tokenizer, supervised=True, **kwargs)
    assert not np.asarray(sft.off_policy_mask_NxT).any()
    np.testing.assert_allclose(sft.advantage_N, [1, 1, 0, 0])
    with pytest.raises(ValueError, match="capacity=1"):
        replay_lib.replay_batch(rows, c.tokenizer, **{**kwargs, "capacity": 1})
    with pytest.raises(ValueError, match="row 0 has 3 response tokens"):
        replay_lib.replay_batch(rows, c.tokenizer, **{**kwargs, "response_len": 2})
