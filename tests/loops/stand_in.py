"""Stand-ins for tests of golfjax/loops: a batch source's `sample`, for tests that
drive the rollout schedule without a sampler (tests/loops/schedule_test.py,
tests/train/reference_test.py); a tokenizer and a task whose rewards are known
(tests/loops/rl_test.py, tests/loops/partial_rollout_test.py).

Test files import these, never each other: under Bazel a test's target carries
only its own file and tests/ support modules (//:test_support)."""

import time

import numpy as np

from golfjax import advantages
from golfjax.models import config as model_config_lib
from golfjax.rewards.base import Task
from golfjax.types import make_batch

MODEL = model_config_lib.get_preset("tiny")
B, G, P, T = 2, 4, 6, 5  # prompts per mini-batch, group, prompt and response tokens



class TokenTokenizer:
    """A question is one token, its integer; ids decode to their numbers joined by spaces."""

    def encode_prompt(self, question, template_kwargs):
        return [int(question)]

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


class AnswerTask(Task):
    """Scores 1 when the response is the problem's answer, else 0."""

    def load(self, split):
        raise NotImplementedError

    def score(self, problem, response):
        return 1.0 if response == problem.answer else 0.0


def build_batch(calls=None, delay_s=0.0):
    """A stand-in for a source's `sample`: random responses, mixed rewards."""

    def build(params, problems, key):
        del params
        if delay_s:
            time.sleep(delay_s)
        rng = np.random.default_rng(np.asarray(key).tolist())
        n = len(problems) * G
        prompt_mask = np.ones((n, P), bool)
        response_len = rng.integers(2, T + 1, n)
        response_mask = np.arange(T)[None, :] < response_len[:, None]
        reward = rng.integers(0, 2, n).astype(np.float32)
        reward[::G], reward[1::G] = 1.0, 0.0  # Every group has signal.
        group_id = np.repeat(np.arange(len(problems)), G)
        if calls is not None:
            calls.append([p.id for p in problems])
        batch = make_batch(
            prompt_tokens_NxP=rng.integers(1, MODEL.vocab_size, (n, P)) * prompt_mask,
            prompt_mask_NxP=prompt_mask,
            tokens_NxT=rng.integers(1, MODEL.vocab_size, (n, T)) * response_mask,
            response_mask_NxT=response_mask,
            # The sampler's log-probs: unlike the trainer's (about log 1/256).
            behaviour_logp_NxT=np.log(rng.uniform(0.02, 0.05, (n, T))),
            advantage_N=advantages.grpo(reward, group_id),
            reward_N=reward,
            group_id_N=group_id,
        )
        return batch, {"reward/mean": float(reward.mean()), "samples/generated": float(n)}

    return build
