"""Tests for golfjax/loops/schedule.py (k mini-batches per rollout) and
golfjax/loops/async_rollout.py (rollouts produced while the learner trains).

The schedule is driven with a stand-in batch source (random responses with
mixed rewards per group, keyed by the rollout key), so these tests exercise the
schedule's bookkeeping and the train step on a 2-device mesh without sampling.
End-to-end runs through the train loop are in tests/experiments/vespo_test.py.
"""

import dataclasses
import threading
import time

import jax
import numpy as np
import pytest

from golfjax import config as config_lib
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.data.iterator import EpochIterator
from golfjax.loops import async_rollout as async_lib
from golfjax.loops import rollout_worker as worker_lib
from golfjax.loops import schedule as schedule_lib
from golfjax.losses import LossConfig
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.train import state as state_lib
from golfjax.train.trainer import Trainer
from tests.loops.stand_in import B, G, MODEL
from tests.loops.stand_in import build_batch as _build_batch
PROBLEMS = [Problem(id=i, question=f"q{i}", answer="0") for i in range(64)]
# Generous: a bound for a hung thread, never a timing assertion.
DEADLINE_S = 120.0


def _mesh():
    return sharding.make_mesh(1, 2, 1, devices=jax.devices()[:2])


def _trainer(loss, mesh, lr=1e-2):
    # eps = 1e-4: see tests/train/step_test.py (Adam's first step amplifies
    # summation-order noise of near-zero gradient entries otherwise).
    opt_cfg = state_lib.OptimizerConfig(lr=lr, eps=1e-4, weight_decay=0.0)
    return Trainer(MODEL, config_lib.TrainSection(loss=loss), LossConfig(), opt_cfg, mesh)


def _run_config(loss="vespo", n=1, steps=8, **schedule):
    return dataclasses.replace(
        config_lib.RunConfig(),
        train=config_lib.TrainSection(loss=loss, steps=steps, prompts_per_step=B, advantage="grpo"),
        schedule=config_lib.ScheduleSection(minibatches=n, **schedule),
    )


@dataclasses.dataclass(frozen=True)
class _Source:
    """A batch source around a `build(params, problems, key)` function."""

    build: object

    def sample(self, params, problems, key):
        return self.build(params, problems, key)


def _loop(trainer, cfg, build, **kwargs):
    args = dict(trainer=trainer, source=_Source(build), problems=PROBLEMS,
                recompute_old_logp=cfg.train.recompute_old_logp)
    if not cfg.schedule.async_rollout:
        return schedule_lib.RolloutSchedule(cfg.schedule, **args, **kwargs)
    return async_lib.AsyncRolloutSchedule(cfg.schedule, **args, key=jax.random.PRNGKey(0), **kwargs)


_PARAMS = []


def _init(trainer):
    if not _PARAMS:  # Host arrays, initialised once; init_state copies them.
        _PARAMS.append(jax.device_get(transformer.init_params(MODEL, jax.random.PRNGKey(0))))
    return trainer.init_state(_PARAMS[0], 0)


def _step(loop, state, data, key):
    """One optimizer step as the train loop takes it."""
    batch, info = loop.next_batch(state, data, key)
    with loop.device_programs():
        state, metrics = loop.trainer.step(state, batch)
    return state, {**metrics_lib.to_scalars(metrics), **info}


def _train(loop, state, data, steps):
    records = []
    for s in range(steps):
        state, metrics = _step(loop, state, data, jax.random.fold_in(jax.random.PRNGKey(1), s))
        records.append(metrics)
    return state, records


@pytest.fixture(scope="module")
def mesh():
    return _mesh()


@pytest.fixture(scope="module")
def vespo_trainer(mesh):
    return _trainer("vespo", mesh)


# ------------------------------------------------------------------ sync mode


def test_on_policy_vespo_step_equals_reinforce_with_grpo_advantages(mesh, vespo_trainer):
    # Fresh data (N = 1, old_logp rescored by the trainer): W = 1, so
    # phi(1) = 1^k exp(lam (1 - 1)) = 1 and l_t = -phi A logp = -A logp, the
    # REINFORCE token loss; both aggregate with token-mean over the same tokens.
    reinforce = _trainer("reinforce", mesh)
    results = {}
    for name, trainer in (("vespo", vespo_trainer), ("reinforce", reinforce)):
        loop = _loop(trainer, _run_config(loss=name, n=1), _build_batch())
        data = EpochIterator(len(PROBLEMS), B, seed=3)
        state, (metrics,) = _train(loop, _init(trainer), data, 1)
        results[name] = (jax.device_get(state.params), metrics)
    (vespo_params, vespo_metrics), (reinforce_params, reinforce_metrics) = results["vespo"], results["reinforce"]
    # The step's log-probs against the rescoring program's: equal up to rounding.
    assert vespo_metrics["schedule/log_w_abs_max"] < 1e-5
    assert vespo_metrics["loss/phi_pos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert vespo_metrics["loss"] == pytest.approx(reinforce_metrics["loss"], rel=1e-5, abs=1e-7)
    assert vespo_metrics["grad_norm"] == pytest.approx(reinforce_metrics["grad_norm"], rel=1e-5)
    assert vespo_metrics["grad_norm"] > 0
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), vespo_params, reinforce_params
    )


def test_minibatch_j_is_trained_j_minus_1_steps_after_its_behaviour_policy(vespo_trainer):
    n = 4
    calls = []
    loop = _loop(vespo_trainer, _run_config(n=n, steps=2 * n), _build_batch(calls))
    data = EpochIterator(len(PROBLEMS), B, seed=3)
    state = _init(vespo_trainer)
    records = []
    for s in range(2 * n):
        state, metrics = _step(loop, state, data, jax.random.fold_in(jax.random.PRNGKey(1), s))
        records.append(metrics)
        # The whole rollout batch is sampled before its first update.
        assert len(calls) == n * (s // n + 1)
        assert loop.checkpoint_now(s + 1, force=True, every=1) == ((s + 1) % n == 0)
    assert [r["schedule/behaviour_version"] for r in records] == [0.0] * n + [float(n)] * n
    assert [r["schedule/staleness"] for r in records] == [0.0, 1.0, 2.0, 3.0] * 2
    assert [r["schedule/minibatch"] for r in records] == [1.0, 2.0, 3.0, 4.0] * 2
    for r in records:
        if r["schedule/minibatch"] == 1:
            # old_logp was scored by these very parameters: W = 1 (up to two programs' rounding).
            assert r["schedule/log_w_abs_max"] < 1e-5, r
            assert r["loss/phi_pos_mean"] == pytest.approx(1.0, abs=1e-5)
            assert r["schedule/ess"] == pytest.approx(1.0, abs=1e-6)
        else:
            assert r["schedule/log_w_abs_max"] > 0.0, r
            assert r["schedule/ess"] < 1.0
    assert sum(r["samples/generated"] for r in records) == 2 * n * B * G
    # Mini-batches are consecutive draws of the data iterator.
    expected = EpochIterator(len(PROBLEMS), B, seed=3)
    assert calls == [expected.next() for _ in range(2 * n)]


def test_k_minibatches_make_ppo_clip_active_and_log_their_count(mesh):
    # One rollout of k = 2 mini-batches, old log-probs scored once before the
    # first update: the second mini-batch's ratios have moved, so PPO clips.
    ppo = _trainer("ppo_clip", mesh)
    loop = _loop(ppo, _run_config(loss="ppo_clip", n=2, steps=2), _build_batch())
    _, records = _train(loop, _init(ppo), EpochIterator(len(PROBLEMS), B, seed=3), 2)
    assert [r["schedule/minibatches"] for r in records] == [2.0, 2.0]
    assert [r["schedule/minibatch"] for r in records] == [1.0, 2.0]
    assert records[0]["loss/clip_frac"] == 0.0 < records[1]["loss/clip_frac"]
    assert records[0]["schedule/log_w_abs_max"] < 1e-5 < records[1]["schedule/log_w_abs_max"]
    # VESPO's kernel is the VESPO loss's metric only.
    assert not any(key.startswith("vespo/") for r in records for key in r)


def test_on_policy_is_k_equal_1_with_unit_weights(mesh):
    ppo = _trainer("ppo_clip", mesh)
    calls = []
    loop = _loop(ppo, _run_config(loss="ppo_clip", n=1, steps=2), _build_batch(calls))
    _, records = _train(loop, _init(ppo), EpochIterator(len(PROBLEMS), B, seed=3), 2)
    assert len(calls) == 2 and loop.checkpoint_now(2, force=True, every=1)
    assert [r["schedule/staleness"] for r in records] == [0.0, 0.0]
    assert all(r["loss/clip_frac"] == 0.0 for r in records)
    assert all(r["schedule/log_w_abs_max"] < 1e-5 and r["schedule/ess"] == pytest.approx(1.0) for r in records)
    assert not any(key.startswith("vespo/") for r in records for key in r)


def test_sync_mode_is_deterministic(vespo_trainer):
    def run():
        loop = _loop(vespo_trainer, _run_config(n=2, steps=2), _build_batch())
        state, records = _train(loop, _init(vespo_trainer), EpochIterator(len(PROBLEMS), B, seed=3), 2)
        return jax.device_get(state.params), records

    (params_a, records_a), (params_b, records_b) = run(), run()
    assert records_a == records_b
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_sampler_logprobs_as_old_logp(vespo_trainer):
    # recompute_old_logp=False: W compares the policy with the sampler's own
    # log-probs, so it differs from 1 from the first mini-batch on.
    cfg = _run_config(n=2, steps=2)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, recompute_old_logp=False))
    loop = _loop(vespo_trainer, cfg, _build_batch())
    _, records = _train(loop, _init(vespo_trainer), EpochIterator(len(PROBLEMS), B, seed=3), 2)
    assert all(r["schedule/log_w_abs_max"] > 1.0 for r in records)


def test_checkpoint_only_between_rollouts(vespo_trainer):
    loop = _loop(vespo_trainer, _run_config(n=4, steps=8), _build_batch())
    state = _init(vespo_trainer)
    data = EpochIterator(len(PROBLEMS), B, seed=3)
    saves = []
    for s in range(8):
        state, _ = _step(loop, state, data, jax.random.PRNGKey(s))
        saves.append(loop.checkpoint_now(s + 1, force=True, every=3))
    # Forced or not, never mid-rollout; every=3 is passed during both rollouts.
    assert saves == [False, False, False, True] * 2
    # Unforced: when a multiple of `every` was passed during the rollout (4, 8].
    assert loop.checkpoint_now(8, force=False, every=8)
    assert not loop.checkpoint_now(8, force=False, every=16)


def test_config_errors_name_the_keys():
    with pytest.raises(ValueError, match=r"train.steps=6 is not a multiple of config.schedule.minibatches = 4"):
        config_lib.validate(_run_config(n=4, steps=6), 8)
    with pytest.raises(ValueError, match=r"staleness_threshold=-1; expected >= 0 and finite"):
        config_lib.ScheduleSection(async_rollout=True, staleness_threshold=-1)
    with pytest.raises(ValueError, match=r"rollout_devices=2; expected .* 0 unless async_rollout"):
        config_lib.ScheduleSection(rollout_devices=2)
    with pytest.raises(ValueError, match=r"schedule.rollout_devices=8 leaves no device to train on"):
        worker_lib.split_devices(config_lib.ScheduleSection(async_rollout=True, rollout_devices=8))
    with pytest.raises(ValueError, match=r"config.schedule.rollout_devices=8 leaves no device to train on"):
        config_lib.validate(_run_config(async_rollout=True, rollout_devices=8), 8)
    cfg = _run_config(n=1, async_rollout=True, rollout_devices=4, partial_rollout=False)
    with pytest.raises(ValueError, match=r"rollout_devices=4 needs config.train.recompute_old_logp=False"):
        config_lib.validate(cfg, 8)
    with pytest.raises(ValueError, match=r"async_rollout=True in a multi-process job \(2 processes\) needs"
                                         r" config.schedule.rollout_processes >= 1"):
        config_lib.validate(_run_config(async_rollout=True), 8, process_count=2)
    with pytest.raises(ValueError, match=r"^config.schedule.partial_rollout=True needs config.train.recompute_old_logp"):
        config_lib.validate(_run_config(async_rollout=True), 8)
    cfg = _run_config(async_rollout=True)
    cfg = dataclasses.replace(cfg, golf=dataclasses.replace(cfg.golf, enabled=True))
    with pytest.raises(ValueError, match=r"^config.schedule.partial_rollout=True needs config.golf.enabled=False"):
        config_lib.validate(cfg, 8)
    # Synchronous runs ignore the asynchronous keys.
    config_lib.validate(dataclasses.replace(cfg, schedule=config_lib.ScheduleSection()), 8)


# ------------------------------------------------------------------ async mode


def _wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)

def _async_config(steps, **schedule):
    cfg = _run_config(n=1, steps=steps, async_rollout=True, **schedule)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, recompute_old_logp=False))


@pytest.mark.parametrize("sync_every, threshold", [(1, 0.0), (2, 1.0)])
def test_async_throttle_bounds_the_lag_and_nothing_is_dropped(vespo_trainer, sync_every, threshold):
    # Production stays under (1 + threshold) * sync_every mini-batches beyond
    # what the learner had consumed at the last sync: sync_every = 1 and
    # threshold 0 is on-policy; (2, 1.0) lets a mini-batch be 3 steps old.
    steps = 6
    cfg = _async_config(steps, sync_every=sync_every, staleness_threshold=threshold)
    calls = []
    loop = _loop(vespo_trainer, cfg, _build_batch(calls))
    data = EpochIterator(len(PROBLEMS), B, seed=3)
    with loop:
        _, records = _train(loop, _init(vespo_trainer), data, steps)
        assert loop.checkpoint_now(steps, force=True, every=100)  # Stops the producer.
    bound = cfg.schedule.max_ahead - 1
    assert all(0 <= r["schedule/lag_min"] == r["schedule/lag_max"] == r["schedule/staleness"] <= bound
               for r in records), records
    assert all(r["schedule/multi_version_frac"] == 0.0 and r["schedule/queue_depth"] <= bound for r in records)
    # Weights are published every sync_every steps: the versions trained.
    assert {r["schedule/behaviour_version"] % sync_every for r in records} == {0.0}
    assert sum(r["samples/generated"] for r in records) == steps * B * G  # Nothing dropped.
    # The iterator is rewound to just after the consumed rollouts: what the
    # producer held is drawn again after a checkpoint, never skipped.
    expected = EpochIterator(len(PROBLEMS), B, seed=3)
    for _ in range(steps):
        expected.next()
    assert data.state() == expected.state()
    fresh = EpochIterator(len(PROBLEMS), B, seed=3)
    assert calls[:steps] == [fresh.next() for _ in range(steps)]


def test_partial_rollouts_report_each_rows_versions(vespo_trainer):
    # A source with `sample_partial` (golfjax/loops/rl.py's GroupSource) is
    # called with the channel's `latest` and reports the versions behind each
    # row; the learner's lag metrics read them.
    build = _build_batch()
    refreshed = []

    class Partial(_Source):
        def sample_partial(self, refresh, problems, key, chunk_tokens):
            params, version = refresh()
            refreshed.append(chunk_tokens)
            batch, info = self.build(params, problems, key)
            v_max = np.full(batch.num_rows, version, np.int32)
            return batch, info, np.where(np.arange(batch.num_rows) % 2, version - 1, version), v_max

    cfg = _async_config(4, sync_every=1, staleness_threshold=0.0, rollout_chunk_tokens=3)
    loop = async_lib.AsyncRolloutSchedule(cfg.schedule, trainer=vespo_trainer, source=Partial(build),
                                          problems=PROBLEMS, key=jax.random.PRNGKey(0), recompute_old_logp=False)
    with loop:
        _, records = _train(loop, _init(vespo_trainer), EpochIterator(len(PROBLEMS), B, seed=3), 4)
    assert refreshed and set(refreshed) == {3}
    for r in records:
        assert r["schedule/multi_version_frac"] == 0.5
        assert r["schedule/lag_max"] == r["schedule/lag_min"] + 1 == r["schedule/staleness"]
        assert r["schedule/lag_mean"] == r["schedule/lag_min"] + 0.5
        assert r["schedule/learner_wait_s"] >= 0.0 and r["schedule/rollout_wait_s"] >= 0.0


def test_async_loop_reraises_a_worker_failure(vespo_trainer):
    cfg = _async_config(4)
    build, calls = _build_batch(), []

    def failing(params, problems, key):
        calls.append(problems)
        if len(calls) == 2:
            raise RuntimeError("the sampler broke")
        return build(params, problems, key)

    loop = _loop(vespo_trainer, cfg, failing)
    state = _init(vespo_trainer)
    with pytest.raises(worker_lib.RolloutWorkerError, match="the sampler broke") as raised:
        with loop:
            _train(loop, state, EpochIterator(len(PROBLEMS), B, seed=3), 4)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert len(calls) == 2  # Stopped after the failure.


def test_async_worker_on_its_own_devices(vespo_trainer):
    # The learner trains on devices 0-1; the worker samples on 2-3 with a
    # snapshot placed there (its own source's mesh), never touching the learner's.
    cfg = _async_config(3, rollout_devices=2)
    learner, rollout = worker_lib.split_devices(cfg.schedule, jax.devices()[:4])
    assert learner == list(vespo_trainer.mesh.devices.flat) and rollout == jax.devices()[2:4]
    seen = []
    build = _build_batch()

    def build_on_rollout_devices(params, problems, key):
        seen.append(set(jax.tree.leaves(params)[0].devices()))
        return build(params, problems, key)

    worker_mesh = sharding.make_mesh(1, -1, 1, devices=rollout)
    loop = _loop(vespo_trainer, cfg, build, worker_source=_Source(build_on_rollout_devices),
                 worker_mesh=worker_mesh)
    with loop:
        _, records = _train(loop, _init(vespo_trainer), EpochIterator(len(PROBLEMS), B, seed=3), 3)
    assert seen and all(devices == set(rollout) for devices in seen)
    assert all(r["schedule/staleness"] <= cfg.schedule.max_ahead - 1 for r in records)


def test_a_worker_failure_after_the_last_step_is_not_lost(vespo_trainer):
    # The worker fails while the learner needs nothing more from it: the
    # failure still surfaces, at the checkpoint that stops the worker.
    cfg = _async_config(1)
    build, calls = _build_batch(), []
    trained, failed = threading.Event(), threading.Event()

    def failing(params, problems, key):
        calls.append(problems)
        if len(calls) == 2:
            # Fail once the learner is done. The learner's step waits for the
            # device lock this call holds, so `trained` cannot be set meanwhile
            # on a shared mesh: wait a moment, not the whole deadline.
            trained.wait(2.0)
            failed.set()
            raise RuntimeError("the sampler broke late")
        return build(params, problems, key)

    loop = _loop(vespo_trainer, cfg, failing)
    data = EpochIterator(len(PROBLEMS), B, seed=3)
    with pytest.raises(worker_lib.RolloutWorkerError, match="broke late"):
        with loop:
            _train(loop, _init(vespo_trainer), data, 1)
            trained.set()
            _wait_for(failed.is_set, "the worker to fail")
            loop.checkpoint_now(1, force=True, every=100)
    # The position is still just after the one trained rollout.
    expected = EpochIterator(len(PROBLEMS), B, seed=3)
    expected.next()
    assert data.state() == expected.state()
