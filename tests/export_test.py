"""Tests for golfjax/export.py: a run's policy as an HF checkpoint, and runs from it."""

import os

import jax
import numpy as np
import pytest

from experiments.configs import common
from golfjax import config as config_lib
from golfjax import export as export_lib
from golfjax import metrics as metrics_lib
from golfjax import train_loop
from golfjax import sharding
from golfjax.models import hf
from golfjax.tokenizer import load_tokenizer
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import state as state_lib
from golfjax.train.trainer import Trainer


def _cold_start_only(workdir):
    c = common.feedback_config("smoke", golf=False)
    c.train.steps = 0
    c.checkpoint.every = 1
    train_loop.train(c, workdir)
    return c


def _truncate_largest_file(directory):
    paths = [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files]
    path = max(paths, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
def test_export_then_rl_from_the_export(tmp_path, capsys):
    workdir, out = tmp_path / "cold", tmp_path / "policy"
    c = _cold_start_only(str(workdir))
    records = metrics_lib.read_metrics(workdir)
    # train.steps = 0: the cold start alone, evaluated on the RL task at its end.
    assert [r["step"] for r in records] == [1, 2] and "eval/accuracy" in records[-1]

    assert export_lib.main(["--workdir", str(workdir), "--out", str(out)]) == 0
    model_config, params = hf.load(str(out))
    assert model_config.vocab_size == 256 and model_config.num_layers == 2

    # The exported weights are the checkpoint's, bit for bit.
    mesh = sharding.make_mesh(1, -1, 1)
    optimizer = config_lib.build(config_lib.RunConfig, c.to_dict()).optimizer
    trainer = Trainer(model_config, config_lib.TrainSection(), config_lib.LossConfig(), optimizer, mesh)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    state, _ = ckpt.restore(trainer.abstract_state)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
                 jax.device_get(state.params))
    # The built-in tokenizer travels with the weights.
    tok = load_tokenizer(str(out))
    assert tok.encode("What is 1+2?") == load_tokenizer(str(workdir / "tokenizer")).encode("What is 1+2?")

    # A damaged newest step: the default export takes the newest intact one
    # and moves nothing (a run may own the directory); asking for the damaged
    # step names it.
    damaged = workdir / "checkpoints" / "2"
    _truncate_largest_file(damaged)
    assert export_lib.main(["--workdir", str(workdir), "--out", str(tmp_path / "p1")]) == 0
    assert "exported step 1" in capsys.readouterr().out
    assert damaged.is_dir() and not (workdir / "damaged_checkpoints").exists()
    assert export_lib.main(["--workdir", str(workdir), "--out", str(tmp_path / "p2"),
                            "--step", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and "truncated" in err[0], err

    # An RL run starts from the exported policy and its tokenizer.
    rl = common.feedback_config("smoke", golf=True)
    rl.model.hf_path = str(out)
    rl.task.tokenizer = str(out)
    rl.cold_start.steps = 0
    rl.train.steps = 1
    last = train_loop.train(rl, str(tmp_path / "rl"))
    assert "reward/mean" in last and np.isfinite(last["loss"])


def test_export_refusals_are_one_line(tmp_path, capsys):
    # issue 26, Found 5: the message alone; 1 for the directory, 2 for a bad --step.
    assert export_lib.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"no checkpoint in {tmp_path}/checkpoints\n"
    with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint in .*checkpoints"):
        export_lib.export(str(tmp_path), str(tmp_path / "out"))
    ckpt = checkpoint_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    tx = state_lib.make_optimizer(state_lib.OptimizerConfig())
    ckpt.save(1, state_lib.init_train_state({"w": np.ones((4, 4), np.float32)}, tx, seed=0), {}, {}, force=True)
    ckpt.close()
    assert export_lib.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--step", "7"]) == 2
    assert capsys.readouterr().err == f"--step=7: no checkpoint for step 7 in {tmp_path}; saved steps: [1]\n"
