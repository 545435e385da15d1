"""Tests for golfjax/loops/rl.py: GroupSource's batch, group_metrics and the
Evaluator's accuracy and pass@k, against values worked out by hand; more
prompts than a sampler call takes are sampled in calls and joined.

The sampler, tokenizer and task are stand-ins that make every sample's reward
known: problem b's prompt is the one token b, the sampler answers it G times
from a script (token 10 + b is right, token 1 wrong), and a response scores 1
when it is the problem's answer.
"""

import dataclasses
import math

import jax
import numpy as np
import pytest

from golfjax.decode import FINISH_STOP, Rollout
from golfjax.loops import rl
from golfjax.rewards.base import Problem
from golfjax.sampling_config import SamplingConfig
from tests.loops.stand_in import AnswerTask, TokenTokenizer

WRONG = 1


@dataclasses.dataclass
class _Sampler:
    """Answers prompt b with `right[b]`: one bool per sample (G of them)."""

    right: dict[int, list[bool]]
    calls: list[list[int]] = dataclasses.field(default_factory=list)
    # The real sampler's config: its largest batch bucket (512) caps a call.
    cfg: SamplingConfig = SamplingConfig()

    def generate(self, params, prompts, key):
        self.calls.append([p[0] for p in prompts])
        answers = [[10 + p[0] if ok else WRONG for ok in self.right[p[0]]] for p in prompts]
        g = len(answers[0])
        n = len(prompts) * g
        # One answer token, then a padding slot.
        tokens_NxT = np.stack([np.concatenate(answers), np.zeros(n)], axis=1).astype(np.int32)
        mask_NxT = np.tile([True, False], (n, 1))
        return Rollout(
            prompt_tokens_NxP=np.repeat(np.array(prompts, np.int32), g, axis=0),
            prompt_mask_NxP=np.ones((n, 1), bool),
            tokens_NxT=tokens_NxT,
            response_mask_NxT=mask_NxT,
            behaviour_logp_NxT=np.where(mask_NxT, -0.5, 0.0).astype(np.float32),
            length_N=np.ones(n, np.int32),
            finish_reason_N=np.full(n, FINISH_STOP, np.int32),
            group_id_N=np.arange(n, dtype=np.int32) // g,
        )


def _problems(b):
    return [Problem(id=i, question=str(i), answer=str(10 + i)) for i in range(b)]


def test_group_metrics_by_hand():
    reward_BxG = np.array([[1.0, 0.5], [0.5, 0.25], [1.0, 1.0]])
    # Mean of the six rewards; a success is a reward of 1: group 1 has none,
    # group 2 only successes.
    assert rl.group_metrics(reward_BxG, prefix="r") == pytest.approx({
        "r/mean": 4.25 / 6, "r/all_fail_frac": 1 / 3, "r/all_success_frac": 1 / 3})


def test_group_source_batch_and_metrics_by_hand():
    sampler = _Sampler({0: [True, False, False, True], 1: [False] * 4})
    source = rl.GroupSource(sampler, AnswerTask(), TokenTokenizer(), rl.advantage_fn("grpo"))
    batch, info = source.sample(None, _problems(2), jax.random.PRNGKey(0))
    # Group 0's rewards 1 0 0 1: mean 1/2, unbiased std sqrt(1/3), so
    # A = +-(1/2) / sqrt(1/3) = +-0.8660; group 1 all 0: no deviation, A = 0.
    a = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(batch.advantage_N, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(batch.reward_N, [1, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.group_id_N, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch.tokens_NxT[:, 0], [10, 1, 1, 10, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch.prompt_tokens_NxP[:, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch.behaviour_logp_NxT, np.tile([-0.5, 0.0], (8, 1)))
    np.testing.assert_array_equal(batch.old_logp_NxT, batch.behaviour_logp_NxT)
    assert not batch.off_policy_mask_NxT.any()
    assert info == pytest.approx({"reward/mean": 2 / 8, "reward/all_fail_frac": 1 / 2,
                                  "reward/all_success_frac": 0.0, "samples/generated": 8.0})


def _pass_at_k(n, c, k):
    """The unbiased estimator of pass@k from n samples of which c are right
    (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_evaluator_accuracy_and_pass_at_k_by_hand():
    # Three problems, k = 4 samples each, right 0, 1 and 4 times; two prompts
    # per sampler call, so the third problem is sampled on its own.
    sampler = _Sampler({0: [False] * 4, 1: [False, False, True, False], 2: [True] * 4})
    evaluator = rl.Evaluator(sampler, _problems(3), AnswerTask(), TokenTokenizer(), batch_size=2)
    metrics = evaluator(None, jax.random.PRNGKey(0))
    assert sampler.calls == [[0, 1], [2]]
    expected = np.mean([_pass_at_k(4, c, 4) for c in (0, 1, 4)])
    assert expected == pytest.approx(2 / 3)
    assert metrics == pytest.approx({"eval/accuracy": 5 / 12, "eval/pass@4": expected})


@dataclasses.dataclass
class _CallsSampler:
    """Records each call's prompt count and key; row r of prompt b answers
    with token 100 * b + r."""

    cfg: SamplingConfig
    calls: list = dataclasses.field(default_factory=list)

    def generate(self, params, prompts, key):
        self.calls.append((len(prompts), np.asarray(jax.random.key_data(key)).tolist()))
        g, p = self.cfg.group_size, max(len(x) for x in prompts)
        tokens = np.zeros((len(prompts) * g, p), np.int32)
        for i, prompt in enumerate(prompts):
            tokens[i * g:(i + 1) * g, p - len(prompt):] = prompt
        n = len(prompts) * g
        return Rollout(
            prompt_tokens_NxP=tokens, prompt_mask_NxP=tokens > 0,
            tokens_NxT=(100 * (np.arange(n) // g) + np.arange(n) % g)[:, None].astype(np.int32),
            response_mask_NxT=np.ones((n, 1), bool), behaviour_logp_NxT=np.zeros((n, 1), np.float32),
            length_N=np.ones(n, np.int32), finish_reason_N=np.zeros(n, np.int32),
            group_id_N=np.arange(n, dtype=np.int32) // g)


def test_prompts_beyond_the_largest_bucket_are_sampled_in_calls_and_joined():
    sampler = _CallsSampler(SamplingConfig(group_size=2, batch_buckets=(2,), pad_id=0))
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    problems = [Problem(id=i, question="", answer=str(100 * (i % 2))) for i in range(5)]
    key = jax.random.key(7)
    groups = rl.sample_groups(sampler, None, problems, prompts, key, AnswerTask(), TokenTokenizer())
    assert [n for n, _ in sampler.calls] == [2, 2, 1]
    keys = [k for _, k in sampler.calls]
    assert keys[0] == np.asarray(jax.random.key_data(jax.random.fold_in(key, 0))).tolist()
    assert len({tuple(k) for k in keys}) == 3
    r = groups.rollout
    np.testing.assert_array_equal(r.group_id_N, np.repeat(np.arange(5), 2))
    # Each call's prompts are left-padded to the longest of all (4 tokens).
    assert r.prompt_tokens_NxP.shape == (10, 4)
    np.testing.assert_array_equal(r.prompt_tokens_NxP[2], [0, 0, 0, 4])
    np.testing.assert_array_equal(r.prompt_mask_NxP[6], [True] * 4)
    # Call i's rows keep their own answers; prompt 2 is call 1's first.
    assert groups.texts[4:6] == ["0", "1"] and groups.reward_N.tolist()[4] == 1.0

    # Within one call, the key is the caller's, unchanged.
    one = _CallsSampler(SamplingConfig(group_size=2, batch_buckets=(8,)))
    rl.sample_groups(one, None, problems, prompts, key, AnswerTask(), TokenTokenizer())
    assert one.calls == [(5, np.asarray(jax.random.key_data(key)).tolist())]


class _MoESampler(_CallsSampler):
    """`_CallsSampler` with an MoE policy's routes: a prompt token's experts are
    (token, token + 1) in each of 2 layers (0 in padding), a response
    token's its own id."""

    def generate(self, params, prompts, key):
        r = super().generate(params, prompts, key)
        experts = np.stack([r.prompt_tokens_NxP, r.prompt_tokens_NxP + 1], axis=-1)
        experts = np.where(r.prompt_mask_NxP[..., None], experts, 0)
        return dataclasses.replace(
            r, prompt_routes_NxPxLxA=np.stack([experts] * 2, axis=2).astype(np.uint8),
            routes_NxTxLxA=np.repeat(r.tokens_NxT[..., None, None], 2, axis=2).astype(np.uint8))


def test_an_moe_policys_routes_are_joined_like_its_prompts():
    sampler = _MoESampler(SamplingConfig(group_size=2, batch_buckets=(2,), pad_id=0))
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    problems = [Problem(id=i, question="", answer="") for i in range(5)]
    r = rl.sample_groups(sampler, None, problems, prompts, jax.random.key(0), AnswerTask(),
                         TokenTokenizer()).rollout
    # Left-padded to 4 slots with the prompts (padding: expert 0 as the token pad).
    assert r.prompt_routes_NxPxLxA.shape == (10, 4, 2, 2)
    np.testing.assert_array_equal(r.prompt_routes_NxPxLxA[..., 0, 0], r.prompt_tokens_NxP)
    np.testing.assert_array_equal(r.prompt_routes_NxPxLxA[2, :, 1], [[0, 0], [0, 0], [0, 0], [4, 5]])
    np.testing.assert_array_equal(r.routes_NxTxLxA[:, 0, 1, 0], r.tokens_NxT[:, 0] % 256)
