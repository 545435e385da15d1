"""Tests for golfjax/train/checkpoint.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from golfjax.train import checkpoint as ckpt_lib
from golfjax.train import state as state_lib


def _mesh():
    return jax.make_mesh(
        (2, 2, 2), ("data", "fsdp", "tensor"),
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
    )


def _state(mesh, seed=0):
    params = {
        "w": jax.random.normal(jax.random.PRNGKey(seed), (8, 4)),
        "norm": {"scale": jnp.ones((4,))},
    }
    tx = state_lib.make_optimizer(state_lib.OptimizerConfig(lr=1e-2))
    state = state_lib.init_train_state(params, tx, seed=seed)
    shardings = _shardings(state, mesh)
    return jax.device_put(state, shardings), shardings


def _shardings(state, mesh):
    def spec(x):
        return NamedSharding(mesh, P("fsdp", "tensor") if x.ndim == 2 and x.shape[0] == 8 else P())

    return jax.tree.map(spec, state)


class CheckpointerTest(parameterized.TestCase):

    def test_round_trip_is_exact_and_lands_on_the_target_shardings(self):
        mesh = _mesh()
        state, shardings = _state(mesh)
        state = jax.device_put(state.replace(step=jnp.asarray(7, jnp.int32)), shardings)
        workdir = self.create_tempdir().full_path
        ckpt = ckpt_lib.Checkpointer(workdir, save_every=1)
        ckpt.save(7, state, {"epoch": 2, "index": 13}, {"train": {"lr": 1e-2}})
        ckpt.wait()
        abstract = ckpt_lib.abstract_with_shardings(state, shardings)
        restored, data = ckpt_lib.Checkpointer(workdir).restore(abstract)
        self.assertEqual(data, {"epoch": 2, "index": 13})
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(got, want)
            self.assertEqual(got.sharding, want.sharding)
        self.assertEqual(ckpt.restore_config(), {"train": {"lr": 1e-2}})
        ckpt.close()

    def test_keeps_the_last_k_and_saves_every_n(self):
        state, _ = _state(_mesh())
        ckpt = ckpt_lib.Checkpointer(self.create_tempdir().full_path, save_every=2, keep=2)
        saved = [ckpt.save(step, state, {}, {}) for step in range(1, 8)]
        # The first save is always taken (nothing to resume from yet), then only
        # multiples of 2; force saves any step.
        self.assertEqual(saved, [True, True, False, True, False, True, False])
        self.assertTrue(ckpt.save(7, state, {}, {}, force=True))
        ckpt.wait()
        self.assertEqual(ckpt.all_steps(), [6, 7])
        ckpt.close()

    def test_a_half_written_step_is_ignored(self):
        mesh = _mesh()
        state, shardings = _state(mesh)
        workdir = self.create_tempdir().full_path
        ckpt = ckpt_lib.Checkpointer(workdir, save_every=1)
        ckpt.save(3, state, {"index": 3}, {})
        ckpt.close()
        # What a crash during the save of step 4 leaves behind: Orbax's
        # temporary directory, never renamed to its final name.
        os.makedirs(os.path.join(workdir, "4.orbax-checkpoint-tmp-1234", "state"))
        reopened = ckpt_lib.Checkpointer(workdir, save_every=1)
        self.assertEqual(reopened.latest_step(), 3)
        _, data = reopened.restore(ckpt_lib.abstract_with_shardings(state, shardings))
        self.assertEqual(data, {"index": 3})
        reopened.close()

    def test_empty_directory(self):
        ckpt = ckpt_lib.Checkpointer(self.create_tempdir().full_path)
        self.assertIsNone(ckpt.latest_step())
        self.assertIsNone(ckpt.restore_config())
        with self.assertRaisesRegex(FileNotFoundError, "no checkpoint in"):
            ckpt.restore(None)
        ckpt.close()

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "save_every=0; expected >= 1"):
            ckpt_lib.Checkpointer(self.create_tempdir().full_path, save_every=0)


class ConfigDiffTest(absltest.TestCase):

    def test_names_the_differing_keys(self):
        saved = {"train": {"lr": 1e-6, "steps": 10}, "loss": {"name": "vespo"}, "seed": 0}
        new = {"train": {"lr": 2e-6, "steps": 10}, "loss": {"name": "vespo"}, "extra": [1]}
        self.assertEqual(
            ckpt_lib.config_diff(saved, new),
            [
                "extra: (absent) -> [1]",
                "seed: 0 -> (absent)",
                "train.lr: 1e-06 -> 2e-06",
            ],
        )
        self.assertEqual(ckpt_lib.config_diff({"a": (1, 2)}, {"a": [1, 2]}), [])
