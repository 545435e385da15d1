"""Tests for golfjax/loops/cold_start.py: the cold start's batches, with a tokenizer alone."""

import numpy as np
import pytest

from experiments.configs import golf as golf_config
from golfjax import config as config_lib
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.loops import cold_start as cold_start_lib
from golfjax.rewards import make_task


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


def _cold_start(tok, **cold_start):
    config = golf_config.get_config("smoke")
    for key, value in cold_start.items():
        config.cold_start[key] = value
    cfg = config_lib.build(config_lib.RunConfig, config)
    held_out = {p.question for p in make_task(cfg.task.name, **cfg.task.task_kwargs()).load("test")}
    return cfg, cold_start_lib.make_cold_start(cfg, tok, held_out)


def _batches(cold, steps):
    """Each step's batch and kind (1.0: refinement batch)."""
    data = cold.data()
    return [cold.batch(step, data) for step in range(steps)]


def test_batches_are_all_plain_or_all_refinement(tok):
    cfg, cold = _cold_start(tok, refine_fraction=0.5)
    batches = _batches(cold, 8)
    kinds = [info["cold_start/refine_batch"] for _, info in batches]
    assert set(kinds) == {0.0, 1.0}  # Both kinds, drawn per step from (seed, step).
    # Plain prompts ("What is 3+45?") fit the smallest bucket; refinement prompts need a larger one.
    smallest = cfg.sampling.prompt_buckets[0]
    lengths = [batch.prompt_tokens_NxP.shape[1] for batch, _ in batches]
    assert [n == smallest for n in lengths] == [k == 0.0 for k in kinds]
    for batch, _ in batches:  # Supervised rows: advantage 1, responses ending in the stop token.
        assert batch.num_rows == cfg.cold_start.batch_size
        np.testing.assert_array_equal(batch.advantage_N, 1.0)
        assert batch.tokens_NxT.shape[1] == cfg.sampling.max_new_tokens


def test_refinement_batches_draw_from_refine_task_kwargs(tok, monkeypatch):
    _, cold = _cold_start(tok, refine_fraction=0.5, refine_task_kwargs={"min_digits": 3, "max_digits": 3})
    seen = []
    make = cold_start_lib.sft_examples.make_cold_start_examples
    monkeypatch.setattr(cold_start_lib.sft_examples, "make_cold_start_examples",
                        lambda task, problems, *a, **kw: seen.append((kw["refine_fraction"], problems))
                        or make(task, problems, *a, **kw))
    _batches(cold, 6)
    assert {fraction for fraction, _ in seen} == {0.0, 1.0}
    for fraction, problems in seen:
        operands = [max(p.meta["a"], p.meta["b"]) for p in problems]
        if fraction:  # 3-digit operands, the refine_task_kwargs.
            assert min(operands) >= 100
        else:  # The cold start's 1-digit sums.
            assert max(operands) < 100


def test_refine_first_steps_come_before_plain_batches(tok):
    _, cold = _cold_start(tok, steps=5, refine_first_steps=3, refine_fraction=0.0,
                          refine_task_kwargs={"min_digits": 3, "max_digits": 3})
    assert min(max(p.meta["a"], p.meta["b"]) for p in cold.refine_problems) >= 100
    assert [info["cold_start/refine_batch"] for _, info in _batches(cold, 5)] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_resumed_cold_start_draws_the_same_batches(tok):
    _, cold = _cold_start(tok, refine_fraction=0.5)
    whole = _batches(cold, 6)
    data = cold.data()
    for step in range(3):
        cold.batch(step, data)
    resumed = cold.data()
    resumed.restore(data.state())
    for step in range(3, 6):
        batch, info = cold.batch(step, resumed)
        assert info == whole[step][1]
        np.testing.assert_array_equal(batch.tokens_NxT, whole[step][0].tokens_NxT)


def test_the_cold_start_never_trains_on_a_held_out_problem(tok):
    # With num_test = 0 and otherwise the RL task's kwargs (1-digit sums that
    # carry), the cold-start split's first problems are exactly the RL test split.
    cfg, cold = _cold_start(tok, task_kwargs={"num_test": 0, "num_train": 45})
    held_out = {p.question for p in make_task(cfg.task.name, **cfg.task.task_kwargs()).load("test")}
    assert len(held_out) == 10
    assert len(cold.problems) == 45 - 10  # Every carrying 1-digit sum, less the held-out ones.
    assert not held_out & {p.question for p in cold.problems}


def test_too_few_cold_start_problems_name_the_config_key(tok):
    with pytest.raises(ValueError, match=r"config.cold_start.refine_task_kwargs: .* gives [0-5] train problems"):
        _cold_start(tok, refine_fraction=0.5, refine_task_kwargs={"num_train": 5})


def test_train_section_is_reinforce_on_the_whole_batch():
    train = config_lib.TrainSection(loss="vespo", kl_coef=0.1, entropy_coef=0.01, micro_batches=4)
    section = cold_start_lib.ColdStart.train_section(train)
    assert (section.loss, section.kl_coef, section.entropy_coef, section.micro_batches) == ("reinforce", 0.0, 0.0, 1)
    assert section.logp_chunk == train.logp_chunk


def test_an_example_that_does_not_fit_names_its_index():
    example = cold_start_lib.SFTExample(prompt_tokens=[1] * 5, response_tokens=[2] * 3)
    with pytest.raises(ValueError, match="cold-start example 0: prompt of 5 tokens"):
        cold_start_lib.sft_batch([example], prompt_len=4, response_len=3, pad_id=0)


def test_metrics_keep_the_step_s_names_the_train_loop_reads():
    metrics = cold_start_lib.ColdStart.metrics(
        {"loss": 2.5, "grad_norm": 1.0, "train/response_tokens": 40.0, "train/skipped_nonfinite": 0.0,
         "entropy": 3.0, "optimizer/lr": 3e-4})
    assert metrics == {"cold_start/nll": 2.5, "grad_norm": 1.0, "optimizer/lr": 3e-4,
                       "train/response_tokens": 40.0, "train/skipped_nonfinite": 0.0}
