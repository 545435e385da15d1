"""Tests for golfjax/train/reference.py and the KL term it feeds (issue 26, Found 1).

The schedule is driven with a stand-in batch source (tests/loops/stand_in.py),
so these tests need no sampler; tests/experiments/main_test.py runs a KL run
through the whole loop, killed and resumed. The float64 reference is
transformers on torch CPU.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from golfjax import advantages
from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.data.iterator import EpochIterator
from golfjax.loops import async_rollout as async_lib
from golfjax.loops import schedule as schedule_lib
from golfjax.losses import LossConfig
from golfjax.models import hf
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import reference as reference_lib
from golfjax.train import state as state_lib
from golfjax.train.trainer import Trainer
from tests.loops import stand_in

MODEL, B = stand_in.MODEL, stand_in.B  # B: prompts per mini-batch
PROBLEMS = [Problem(id=i, question=f"q{i}", answer="0") for i in range(16)]


def _mesh():
    return sharding.make_mesh(1, 2, 1, devices=jax.devices()[:2])


def _trainer(mesh, lr=1e-2, **train):
    train = config_lib.TrainSection(loss="ppo_clip", prompts_per_step=B, kl_coef=0.1, **train)
    opt = state_lib.OptimizerConfig(lr=lr, eps=1e-4, weight_decay=0.0)
    return Trainer(MODEL, train, LossConfig(), opt, mesh)


_build = stand_in.build_batch()  # Random responses, mixed rewards per group.


def _host_batch(key, problems):
    return _build(None, problems, key)[0]


@dataclasses.dataclass(frozen=True)
class _Source:
    """A batch source of random rollouts, with GRPO advantages."""

    def sample(self, params, problems, key):
        return _build(params, problems, key)

    def advantages(self, reward_N, group_id_N, injected_N):
        assert not injected_N.any()
        return np.asarray(advantages.grpo(reward_N, group_id_N))


def _schedule(trainer, minibatches=1):
    return schedule_lib.RolloutSchedule(
        config_lib.ScheduleSection(minibatches=minibatches), trainer=trainer, source=_Source(),
        problems=PROBLEMS, recompute_old_logp=True)


def _step(schedule, state, data, key):
    """One optimizer step as the train loop takes it."""
    batch, info = schedule.next_batch(state, data, key)
    with schedule.device_programs():
        state, metrics = schedule.trainer.step(state, batch)
    return state, {**metrics_lib.to_scalars(metrics), **info}


def _capture_batches(trainer):
    """The batches `trainer.step` is given, as host arrays."""
    seen, step = [], trainer.step

    def recording(state, batch):
        seen.append(jax.device_get(batch))
        return step(state, batch)

    trainer.step = recording
    return seen


def _params(seed=0):
    return jax.device_get(transformer.init_params(MODEL, jax.random.PRNGKey(seed)))


# k2's formula is tested in tests/losses/kl_test.py; k1 (signed) and k3 (the
# default, bounded) each compile a train step here.
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_rl_starts_at_its_reference_so_its_first_kl_is_zero(estimator):
    trainer = _trainer(_mesh(), kl_estimator=estimator)
    batches = _capture_batches(trainer)
    state = trainer.init_state(_params(), 0)
    schedule = _schedule(trainer, minibatches=2)
    schedule.use_reference(reference_lib.copy(state.params))
    data = EpochIterator(len(PROBLEMS), B, 0)
    state, first = _step(schedule, state, data, jax.random.PRNGKey(1))
    # The reference is the starting policy: scored by the same program as
    # old_logp, its log-probs are the behaviour policy's bit for bit.
    np.testing.assert_array_equal(batches[0].ref_logp_NxT, batches[0].old_logp_NxT)
    # The train step's own forward pass rounds differently from the scoring
    # program (loss/approx_kl shows the same gap to old_logp): float32 noise.
    assert abs(first["loss/kl"]) < (1e-6 if estimator == "k1" else 1e-12), first["loss/kl"]
    # One update later, the rollout's second mini-batch still measures the
    # distance to the same reference, now above that noise.
    state, second = _step(schedule, state, data, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(batches[1].ref_logp_NxT, batches[1].old_logp_NxT)
    assert abs(second["loss/kl"]) > 1e-5, second["loss/kl"]


def _float64_logprobs(model_dir, batch):
    """log p(response token) in float64 from transformers, rows left-padded as golfjax lays them out."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float64).eval()
    tokens = np.concatenate([batch.prompt_tokens_NxP, batch.tokens_NxT], axis=1)
    mask = np.concatenate([batch.prompt_mask_NxP, np.ones_like(batch.response_mask_NxT)], axis=1)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                       position_ids=torch.tensor(positions)).logits.double()
    logp = torch.log_softmax(logits, dim=-1).numpy()
    p = batch.prompt_tokens_NxP.shape[1]
    predicting = logp[:, p - 1:-1]  # Slot P + t - 1 predicts response token t.
    return np.take_along_axis(predicting, batch.tokens_NxT[..., None].astype(np.int64), axis=-1)[..., 0]


def _estimate(logp, ref, estimator):
    log_r = ref - logp  # Schulman's note, verl's kl_penalty (k3 bounded by 10, as verl's low_var_kl).
    k3 = np.clip(np.expm1(np.clip(log_r, -20, 20)) - np.clip(log_r, -20, 20), -10, 10)
    return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": k3}[estimator]


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_the_kl_after_a_few_updates_equals_a_float64_reference(estimator, tmp_path):
    trainer = _trainer(_mesh(), lr=3e-3, kl_estimator=estimator)
    reference = _params()
    host = _host_batch(jax.random.PRNGKey(3), PROBLEMS[:B])
    state = trainer.init_state(reference, 0)
    batch = trainer.put_batch(host)
    batch = trainer.with_ref_logprobs(trainer.init_state(reference, 0).params, batch)
    for _ in range(3):
        batch = trainer.with_old_logprobs(state, batch)
        state, _ = trainer.step(state, batch)
    params = jax.device_get(state.params)
    _, metrics = trainer.step(state, trainer.with_old_logprobs(state, batch))
    for name, tree in (("policy", params), ("reference", reference)):
        hf.save(str(tmp_path / name), MODEL, tree)
    logp = _float64_logprobs(str(tmp_path / "policy"), host)
    ref = _float64_logprobs(str(tmp_path / "reference"), host)
    mask = host.response_mask_NxT
    # The ppo_clip default aggregation, token-mean over every response token.
    expected = _estimate(logp, ref, estimator)[mask].mean()
    assert 1e-3 < abs(expected) < 1  # The policy moved away from its reference, within k3's bound.
    np.testing.assert_allclose(float(metrics["loss/kl"]), expected, rtol=2e-3, atol=1e-7)


def test_kl_in_the_reward_lowers_each_reward_by_its_summed_kl():
    trainer = _trainer(_mesh(), kl_in="reward", kl_estimator="k1")
    batches = _capture_batches(trainer)
    reference = _params()
    state = trainer.init_state(reference, 0)
    schedule = _schedule(trainer)
    schedule.use_reference(reference_lib.copy(state.params))
    data = EpochIterator(len(PROBLEMS), B, 0)
    for s in range(3):  # The reference and the policy part after the first update.
        state, metrics = _step(schedule, state, data, jax.random.PRNGKey(10 + s))
    assert "loss/kl" not in metrics  # The term is in the rewards, not the loss.
    batch = batches[-1]
    mask = batch.response_mask_NxT
    kl_N = np.where(mask, batch.old_logp_NxT.astype(np.float64) - batch.ref_logp_NxT, 0.0).sum(axis=1)
    assert np.abs(kl_N).max() > 1e-4
    shaped_N = batch.reward_N - 0.1 * kl_N  # kl_coef = 0.1
    np.testing.assert_allclose(batch.advantage_N, advantages.grpo(shaped_N, batch.group_id_N), rtol=1e-4, atol=1e-5)
    assert metrics["reward/kl_penalty"] == pytest.approx(0.1 * kl_N.mean(), rel=1e-4)


def test_a_saved_reference_restores_exactly_and_damage_is_one_line(tmp_path):
    mesh = _mesh()
    trainer = _trainer(mesh)
    params = trainer.init_state(_params(), 0).params
    path = reference_lib.save(str(tmp_path), params)
    assert path == str(tmp_path / "reference") and not (tmp_path / "reference.tmp").exists()
    abstract = trainer.abstract_state.params
    restored = reference_lib.restore(str(tmp_path), abstract)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(params))
    q = restored["layers"]["attn"]["q"]
    assert q.sharding == abstract["layers"]["attn"]["q"].sharding
    # Saved again (a resume at RL's start): replaced whole.
    reference_lib.save(str(tmp_path), params)
    largest = max((os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns), key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    with pytest.raises(checkpoint_lib.CheckpointError, match=rf"^{largest} has \d+ bytes, its digest says \d+"
                       r" \(truncated\) \(the KL reference, RL's starting parameters"):
        reference_lib.restore(str(tmp_path), abstract)
    with pytest.raises(checkpoint_lib.CheckpointError, match=r"reference is missing \(the KL reference"):
        reference_lib.restore(str(tmp_path / "elsewhere"), abstract)


def test_a_reference_checkpoint_of_another_architecture_is_refused(tmp_path):
    cfg = config_lib.RunConfig(train=config_lib.TrainSection(kl_coef=0.1, ref_path=str(tmp_path)))
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.ref_path='.*': not a Hugging Face checkpoint"):
        reference_lib.check_path(cfg)
    hf.save(str(tmp_path), MODEL.replace(num_layers=3), jax.device_get(
        transformer.init_params(MODEL.replace(num_layers=3), jax.random.PRNGKey(0))))
    with pytest.raises(config_lib.ConfigError, match=r"its num_layers=3 differs from the policy's 2"):
        reference_lib.check_path(cfg)
    # Program settings and dtypes may differ: the reference is loaded in the policy's.
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**saved, "num_hidden_layers": 2, "torch_dtype": "bfloat16"}, f)
    reference_lib.check_path(cfg)


def test_asynchronous_rollouts_come_scored_by_the_reference_and_rewarded_with_it():
    # The worker thread scores old_logp with its parameter snapshot and
    # ref_logp with the reference, then takes the KL out of the rewards.
    trainer = _trainer(_mesh(), kl_in="reward", kl_estimator="k2")
    batches = _capture_batches(trainer)
    state = trainer.init_state(_params(), 0)
    reference = reference_lib.copy(state.params)
    schedule = async_lib.AsyncRolloutSchedule(
        config_lib.ScheduleSection(async_rollout=True, partial_rollout=False), trainer=trainer, source=_Source(),
        problems=PROBLEMS, key=jax.random.PRNGKey(0), recompute_old_logp=True)
    schedule.use_reference(reference)
    data = EpochIterator(len(PROBLEMS), B, 0)
    with schedule:
        for s in range(3):
            state, metrics = _step(schedule, state, data, jax.random.PRNGKey(20 + s))
        schedule.checkpoint_now(3, force=True, every=100)  # Stops the producer.
    for batch in batches:
        expected = trainer.logprobs(reference, trainer.put_batch(batch))
        np.testing.assert_array_equal(batch.ref_logp_NxT, np.asarray(expected))
        kl_N = np.where(batch.response_mask_NxT,
                        0.5 * (batch.old_logp_NxT.astype(np.float64) - batch.ref_logp_NxT) ** 2, 0.0).sum(axis=1)
        np.testing.assert_allclose(batch.advantage_N, advantages.grpo(batch.reward_N - 0.1 * kl_N, batch.group_id_N),
                                   rtol=1e-4, atol=1e-5)
    assert "reward/kl_penalty" in metrics
