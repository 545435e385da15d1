"""Tests for golfjax/components.py: the values `build` derives from a config
(the sampler's buckets and ids, the evaluator's sampler, each optimizer's
learning rate), worked out by hand for the GRPO smoke config on the 8
simulated devices."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import grpo as grpo_config
from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax.loops import rl

WARMUP = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = grpo_config.get_config("smoke")
    config.optimizer.warmup_steps = WARMUP
    config.cold_start.lr = 3 * config.optimizer.lr  # Tells the two optimizers apart.
    cfg = config_lib.build(config_lib.RunConfig, config)
    components, _ = components_lib.build(cfg, str(tmp_path_factory.mktemp("run")))
    return cfg, components


def _learning_rates(trainer, steps):
    """The learning rate of each of the trainer's first updates, read off Adam:
    with the same gradient every step, m_hat / sqrt(v_hat) is 1 in every
    coordinate, so a zero parameter (nothing to decay) moves by -lr."""
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.full(3, 0.1)}  # Under grad_clip: clipping leaves it be.
    opt = trainer.optimizer
    state, rates = opt.init(params), []
    for _ in range(steps):
        updates, state = opt.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], updates["w"][0])
        rates.append(-float(updates["w"][0]))
    return rates


def test_rl_warms_up_from_zero_and_the_cold_start_does_not(built):
    cfg, c = built
    lr = cfg.optimizer.lr
    # RL starts from fresh moments at lr 0, reaching lr after WARMUP updates.
    assert _learning_rates(c.trainer, WARMUP + 2) == pytest.approx(
        [0.0, lr / 4, lr / 2, 3 * lr / 4, lr, lr], rel=1e-5, abs=1e-12)
    # The cold start's own optimizer trains at cold_start.lr from its first update.
    assert _learning_rates(c.cold_start_trainer, 1) == pytest.approx([cfg.cold_start.lr], rel=1e-5)


def test_the_samplers_take_the_tokenizers_ids_and_buckets_that_split_over_the_mesh(built):
    cfg, c = built
    # The mesh is 1 x 8 x 1 (data x fsdp x tensor): rows split 8 ways, so
    # every prompt-count bucket is 8 times a power of two.
    assert dict(c.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    sampling = c.source.sampler.cfg
    assert sampling.batch_buckets == tuple(8 * 2**i for i in range(12))
    assert (sampling.stop_ids, sampling.pad_id) == (tuple(c.tokenizer.stop_ids), c.tokenizer.pad_id)
    assert (sampling.group_size, sampling.temperature) == (4, cfg.sampling.temperature)
    # The evaluator samples eval.samples = 2 per problem at eval.temperature,
    # prompts_per_step = 4 problems at a time, over the first
    # eval.num_problems = 8 test problems.
    assert isinstance(c.source, rl.GroupSource) and isinstance(c.evaluator, rl.Evaluator)
    evaluation = c.evaluator.sampler.cfg
    assert (evaluation.group_size, evaluation.temperature) == (2, cfg.eval.temperature)
    assert evaluation.replace(group_size=4, temperature=cfg.sampling.temperature) == sampling
    assert c.evaluator.batch_size == 4
    assert list(c.evaluator.problems) == c.test_problems == list(c.task.load("test"))[:8]
