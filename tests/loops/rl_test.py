"""golfjax/loops/rl.py: more prompts than a sampler call takes are sampled in calls."""

import dataclasses

import jax
import numpy as np

from golfjax.loops import rl
from golfjax.rewards.base import Problem
from golfjax.sampling import Rollout, SamplingConfig


@dataclasses.dataclass
class _Sampler:
    """Records each call; row r of prompt b answers with token 100 * b + r."""

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


class _Tokenizer:
    def decode(self, ids):
        return " ".join(map(str, ids))


class _Task:
    def score(self, problem, text):
        return float(text == problem.answer)


def test_prompts_beyond_the_largest_bucket_are_sampled_in_calls_and_joined():
    sampler = _Sampler(SamplingConfig(group_size=2, batch_buckets=(2,), pad_id=0))
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    problems = [Problem(id=i, question="", answer=str(100 * (i % 2))) for i in range(5)]
    key = jax.random.key(7)
    groups = rl.sample_groups(sampler, None, problems, prompts, key, _Task(), _Tokenizer())
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
    one = _Sampler(SamplingConfig(group_size=2, batch_buckets=(8,)))
    rl.sample_groups(one, None, problems, prompts, key, _Task(), _Tokenizer())
    assert one.calls == [(5, np.asarray(jax.random.key_data(key)).tolist())]
