"""Tests for golfjax/loops/golf.py: GOLF's batch source on the tiny model."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.configs import golf as golf_config
from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax.loops import golf as golf_lib
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
