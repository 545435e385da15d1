"""Tests for experiments/configs/common.py's task settings."""

import pytest

from experiments.configs import golf as golf_config
from golfjax import feedback
from golfjax.data import sft_examples
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback import refinement
from golfjax.rewards import arith


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


def _bucket(length, buckets):
    return next(b for b in buckets if b >= length)


def test_arith_refinement_prompts_fit_the_112_bucket(tok):
    """golf.py:arith pads its refinement prompts to 112, not 128: every one the
    regime can build (GOLF's, from any failed responses, and the cold start's)
    fits, and none lost its attempt to the token budget."""
    c = golf_config.get_config("arith")
    buckets = c.sampling.prompt_buckets
    template = refinement.TEMPLATES[c.golf.template]
    budget = c.golf.max_refinement_prompt_tokens
    g = c.sampling.group_size

    task = arith.ArithTask(**c.task.kwargs)
    problems = task.load("train") + task.load("test")
    critic = feedback.make_critic(c.golf.critic or None, task)
    # The longest failed responses the sampler can return: max_new_tokens
    # characters, one token each for the character-level tokenizer.
    responses = ["The answer is 1234567"[: c.sampling.max_new_tokens]] * (len(problems) * g)
    rows = [p for p in problems for _ in range(g)]
    prompts = refinement.build_refinement_prompts(
        problems, responses, [0.0] * len(rows), critic.critique(rows, responses, [0.0] * len(rows)), tok,
        group_size=g, max_prompt_tokens=budget, template=template, on_overflow="flag")
    assert all(p.num_attempts == 1 for p in prompts)
    golf_longest = max(len(p.tokens) for p in prompts)

    refine_task = arith.ArithTask(**{**c.task.kwargs, **c.cold_start.task_kwargs,
                                     **c.cold_start.refine_task_kwargs})
    examples = sft_examples.make_cold_start_examples(
        refine_task, refine_task.load("train"), tok, critic=feedback.make_critic(None, refine_task),
        refine_fraction=1.0, max_prompt_tokens=budget, template=template, seed=0)
    cold_longest = max(len(e.prompt_tokens) for e in examples)

    assert 100 < cold_longest <= 112 and 90 < golf_longest <= 112
    assert _bucket(cold_longest, buckets) == _bucket(golf_longest, buckets) == 112


@pytest.mark.parametrize("module, variant, expected", [
    # (prompts per rollout, steps per rollout, response tokens, largest prompt
    # bucket, lr, weight decay, clip high, dual clip, eval temperature, samples):
    # LuckyyySTA/GOLF exp_scripts/critique_grpo_hybrid_{math,if}.sh and
    # FloyedShen/VESPO recipe/vespo/run/{sync/vespo_N_8,fully_async/vespo_S_1.0_N_4}.sh.
    ("golf", "qwen3_8b_math", (128, 4, 6144, 8192, 1e-6, 0.1, 0.2, 10.0, 0.6, 1)),
    ("golf", "math", (128, 4, 6144, 8192, 1e-6, 0.1, 0.2, 10.0, 0.6, 1)),
    ("golf", "qwen3_4b_if", (256, 2, 4096, 8192, 1e-6, 0.1, 0.2, 10.0, 0.6, 1)),
    ("vespo", "qwen3_8b_math", (2048, 8, 15360, 1024, 1e-6, 0.01, 0.2, 3.0, 1.0, 4)),
    ("vespo", "ppo_clip,task=math", (2048, 8, 15360, 1024, 1e-6, 0.01, 0.2, 3.0, 1.0, 4)),
    ("vespo", "qwen3_8b_math,async=1", (256, 1, 15360, 1024, 1e-6, 0.01, 0.2, 3.0, 1.0, 1)),
])
def test_paper_runs_follow_the_released_scripts(module, variant, expected):
    from experiments.configs import vespo as vespo_config
    from golfjax import config as config_lib

    get = {"golf": golf_config, "vespo": vespo_config}[module].get_config
    c = config_lib.build(config_lib.RunConfig, get(variant))
    got = (c.train.prompts_per_step * c.schedule.minibatches, c.schedule.minibatches,
           c.sampling.max_new_tokens, c.sampling.prompt_buckets[-1], c.optimizer.lr,
           c.optimizer.weight_decay, c.loss.eps_high, c.loss.dual_clip, c.eval.temperature, c.eval.samples)
    assert got == expected
    assert c.sampling.group_size == 8 and c.optimizer.grad_clip == 1.0 and c.train.kl_coef == 0
    if module == "golf":
        assert c.golf.enabled and c.golf.max_refinement_prompt_tokens == 8192
        assert c.train.advantage == "drgrpo" and c.loss.agg == "seq-mean-token-sum-norm"
    else:
        assert (c.train.loss, c.train.advantage, c.loss.agg) == (variant.split(",")[0].replace(
            "qwen3_8b_math", "vespo"), "grpo", "token-mean")
    if variant.startswith("qwen3"):
        assert c.model.remat and c.model.preset.startswith("qwen3-")
    if "async" in variant:
        assert (c.schedule.sync_every, c.schedule.staleness_threshold, c.schedule.rollout_devices) == (4, 1.0, 2)
        assert c.schedule.partial_rollout and c.schedule.max_ahead == 8
        assert not c.train.recompute_old_logp
