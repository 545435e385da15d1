"""Tests for golfjax/train/checkpoint.py."""

import os
import re

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
        # Sealing runs beside Orbax's deletion of old steps; the kept ones verify.
        self.assertEqual([ckpt.verify(step) for step in (6, 7)], [True, True])
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


def _largest_file(directory):
    files = [os.path.join(root, n) for root, _, names in os.walk(directory) for n in names]
    return max(files, key=os.path.getsize)


def _truncate_data(step_dir):
    path = _largest_file(os.path.join(step_dir, "state"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return os.path.relpath(path, step_dir), r"has \d+ bytes, its digest says \d+ \(truncated\)"


def _remove_item(step_dir):
    import shutil

    shutil.rmtree(os.path.join(step_dir, "data"))
    return "data/", "is missing"


def _garbage_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write("{not json")
    return "state/_METADATA", "has \\d+ bytes, its digest says"


def _flip_bytes(step_dir):
    path = _largest_file(os.path.join(step_dir, "state"))
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(len(data) - 64, len(data)):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(data)
    return os.path.relpath(path, step_dir), r"differs from its digest \(sha256 mismatch"


class IntegrityTest(parameterized.TestCase):

    def _two_steps(self, workdir, mesh):
        state, shardings = _state(mesh)
        ckpt = ckpt_lib.Checkpointer(workdir, save_every=1)
        ckpt.save(1, state, {"index": 1}, {"seed": 0})
        ckpt.save(2, state, {"index": 2}, {"seed": 0})
        ckpt.close()
        return state, ckpt_lib.abstract_with_shardings(state, shardings)

    def test_every_saved_step_is_sealed_and_verifies(self):
        workdir = self.create_tempdir().full_path
        self._two_steps(workdir, _mesh())
        ckpt = ckpt_lib.Checkpointer(workdir)
        for step in (1, 2):
            self.assertTrue(os.path.exists(os.path.join(workdir, str(step), "digest.json")))
            self.assertTrue(ckpt.verify(step))
        reports = []
        found = ckpt.newest_intact(reports.append)
        self.assertEqual((found.step, found.data, found.config, found.verified),
                         (2, {"index": 2}, {"seed": 0}, True))
        self.assertEqual(reports, [])
        ckpt.close()

    @parameterized.named_parameters(
        ("truncated_data_file", _truncate_data),
        ("missing_item", _remove_item),
        ("garbage_metadata", _garbage_metadata),
        ("flipped_bytes", _flip_bytes),
    )
    def test_a_damaged_latest_step_falls_back_to_the_intact_one(self, damage):
        workdir = self.create_tempdir().full_path
        state, abstract = self._two_steps(workdir, _mesh())
        rel, cause = damage(os.path.join(workdir, "2"))
        ckpt = ckpt_lib.Checkpointer(workdir)
        # A reader without the lock (an export) finds the same step, moving nothing.
        reports = []
        self.assertEqual(ckpt.newest_intact(reports.append, set_aside=False).step, 1)
        self.assertLen(reports, 1)
        self.assertEqual(ckpt.all_steps(), [1, 2])
        reports = []
        found = ckpt.newest_intact(reports.append)
        self.assertEqual(found.step, 1)
        self.assertLen(reports, 2)
        self.assertRegex(reports[0], rf"^damaged checkpoint: {os.path.join(workdir, '2', rel)}\S* {cause}")
        self.assertTrue(reports[0].endswith("; trying step 1"))
        # The damaged step is set aside, not deleted, so the resumed run can save step 2 again.
        # (The test cases share the parent directory, so an earlier case's step 2 may be there.)
        aside = os.path.join(os.path.dirname(workdir), "damaged_checkpoints", "2")
        self.assertRegex(reports[1], rf"^moved damaged step 2 to {re.escape(aside)}(\.\d+)?$")
        self.assertTrue(os.path.isdir(reports[1].split(" to ", 1)[1]))
        self.assertEqual(ckpt.all_steps(), [1])
        restored, data = ckpt.restore(abstract, found.step)
        self.assertEqual(data, {"index": 1})
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(got, want)
        # With the older step damaged too, nothing is intact: one line, no fallback.
        damage(os.path.join(workdir, "1"))
        with self.assertRaisesRegex(
                ckpt_lib.CheckpointError,
                rf"^no intact checkpoint in {workdir}: {os.path.join(workdir, '1', rel)}\S* {cause}"):
            ckpt.newest_intact(reports.append)
        ckpt.close()

    def test_every_step_damaged_is_one_line_naming_the_newest(self):
        workdir = self.create_tempdir().full_path
        self._two_steps(workdir, _mesh())
        rel, cause = _flip_bytes(os.path.join(workdir, "2"))
        _flip_bytes(os.path.join(workdir, "1"))
        ckpt = ckpt_lib.Checkpointer(workdir)
        with self.assertRaisesRegex(
                ckpt_lib.CheckpointError,
                rf"^no intact checkpoint in {workdir}: {os.path.join(workdir, '2', rel)}\S* {cause}"
                r".* \(and 1 older damaged step\(s\)\)$"):
            ckpt.newest_intact(lambda line: None)
        self.assertEqual(ckpt.all_steps(), [1, 2])  # Nothing moved when nothing is resumed.
        ckpt.close()

    def test_a_garbled_digest_is_damage(self):
        workdir = self.create_tempdir().full_path
        self._two_steps(workdir, _mesh())
        with open(os.path.join(workdir, "2", "digest.json"), "w") as f:
            f.write('{"files": ')
        with self.assertRaisesRegex(ckpt_lib.CheckpointError, r"2/digest.json is unreadable \(JSONDecodeError"):
            ckpt_lib.Checkpointer(workdir).verify(2)

    def test_an_unsealed_step_is_restored_unverified_and_checked_finite(self):
        mesh = _mesh()
        workdir = self.create_tempdir().full_path
        state, abstract = self._two_steps(workdir, mesh)
        os.remove(os.path.join(workdir, "2", "digest.json"))
        ckpt = ckpt_lib.Checkpointer(workdir)
        reports = []
        found = ckpt.newest_intact(reports.append)
        self.assertEqual((found.step, found.verified), (2, False))
        self.assertEqual(reports, [f"checkpoint {workdir}/2 has no digest (its save was not sealed);"
                                   " restoring it unverified"])
        ckpt.restore(abstract, 2)
        # A state that is not finite never restores silently.
        bad = state.replace(params={**state.params, "w": state.params["w"].at[0, 0].set(jnp.nan)})
        ckpt.save(3, bad, {}, {}, force=True)
        ckpt.wait()
        with self.assertRaisesRegex(ckpt_lib.CheckpointError,
                                    rf"^{workdir}/3/state holds non-finite values in 1 array\(s\), e.g."
                                    r" state.params\['w'\]$"):
            ckpt.restore(abstract, 3)
        ckpt.close()

    def test_a_damaged_unsealed_step_fails_in_one_line(self):
        mesh = _mesh()
        workdir = self.create_tempdir().full_path
        _, abstract = self._two_steps(workdir, mesh)
        os.remove(os.path.join(workdir, "2", "digest.json"))
        _garbage_metadata(os.path.join(workdir, "2"))
        ckpt = ckpt_lib.Checkpointer(workdir)
        with self.assertRaises(ckpt_lib.CheckpointError) as raised:
            ckpt.restore(abstract, 2)
        self.assertRegex(str(raised.exception), rf"^{workdir}/2 does not restore \(\w+: ")
        self.assertNotIn("\n", str(raised.exception))
        ckpt.close()


class RestoreNewestTest(parameterized.TestCase):
    """issue 26, Found 3: a step that does not restore, or restores non-finite
    values, is set aside like a damaged one, and the walk falls back."""

    def _steps(self, workdir, mesh, poisoned):
        state, shardings = _state(mesh)
        ckpt = ckpt_lib.Checkpointer(workdir, save_every=1)
        ckpt.save(1, state, {"index": 1}, {"seed": 0})
        # Sealed with a valid digest, yet not finite: what a poisoned update saved.
        bad = state.replace(params={**state.params, "w": state.params["w"].at[0, 0].set(jnp.inf)})
        ckpt.save(2, bad if poisoned else state, {"index": 2}, {"seed": 0})
        ckpt.close()
        return state, ckpt_lib.abstract_with_shardings(state, shardings)

    def test_a_sealed_step_with_a_nonfinite_state_falls_back_and_is_set_aside(self):
        workdir = self.create_tempdir().full_path
        state, abstract = self._steps(workdir, _mesh(), poisoned=True)
        ckpt = ckpt_lib.Checkpointer(workdir)
        self.assertEqual(ckpt.newest_intact(lambda _: None, set_aside=False).step, 2)  # Its digest verifies.
        reports = []
        found = ckpt.restore_newest(lambda step: abstract, reports.append, set_aside=False)  # An export.
        self.assertEqual((found.step, found.data), (1, {"index": 1}))
        self.assertEqual(ckpt.all_steps(), [1, 2])
        found = ckpt.restore_newest(lambda step: abstract, reports.append)
        self.assertEqual(found.step, 1)
        damaged = (f"damaged checkpoint: {workdir}/2/state holds non-finite values in 1 array(s),"
                   " e.g. state.params['w']; trying step 1")
        self.assertEqual(reports[:2], [damaged, damaged])
        self.assertRegex(reports[2], r"^moved damaged step 2 to .*damaged_checkpoints/2(\.\d+)?$")
        self.assertEqual(ckpt.all_steps(), [1])
        for got, want in zip(jax.tree.leaves(found.state), jax.tree.leaves(state)):
            np.testing.assert_array_equal(got, want)
        ckpt.close()

    def test_an_unsealed_step_that_does_not_restore_falls_back(self):
        workdir = self.create_tempdir().full_path
        _, abstract = self._steps(workdir, _mesh(), poisoned=False)
        # Killed between Orbax's finalisation and the seal, with a torn file.
        os.remove(os.path.join(workdir, "2", "digest.json"))
        _garbage_metadata(os.path.join(workdir, "2"))
        ckpt = ckpt_lib.Checkpointer(workdir)
        reports = []
        found = ckpt.restore_newest(lambda step: abstract, reports.append)
        self.assertEqual(found.step, 1)
        self.assertRegex(reports[0], rf"^damaged checkpoint: {workdir}/2 does not restore \(\w+: .*; trying step 1$")
        self.assertEqual(ckpt.all_steps(), [1])
        # Nothing restores: one line, and nothing is moved.
        _garbage_metadata(os.path.join(workdir, "1"))
        with self.assertRaisesRegex(ckpt_lib.CheckpointError, rf"^no intact checkpoint in {workdir}: {workdir}/1/"):
            ckpt.restore_newest(lambda step: abstract, reports.append)
        self.assertEqual(ckpt.all_steps(), [1])
        ckpt.close()


class ConfigChangesTest(absltest.TestCase):

    def test_lengthening_and_evaluation_changes_are_allowed_the_rest_refused(self):
        saved = {"train": {"steps": 40, "lr": 1.0}, "eval": {"every": 5, "samples": 4}, "seed": 0}
        new = {"train": {"steps": 80, "lr": 2.0}, "eval": {"every": 10, "samples": 4}, "seed": 0,
               "evaluation": 1}
        allowed, refused = ckpt_lib.config_changes(saved, new)
        self.assertEqual(allowed, ["eval.every: 5 -> 10", "train.steps: 40 -> 80"])
        self.assertEqual(refused, ["evaluation: (absent) -> 1", "train.lr: 1.0 -> 2.0"])
        self.assertEqual(ckpt_lib.config_changes(saved, saved), ([], []))
        self.assertEqual(ckpt_lib.config_changes(saved, new, resumable=("train.",))[0],
                         ["train.lr: 1.0 -> 2.0", "train.steps: 40 -> 80"])
