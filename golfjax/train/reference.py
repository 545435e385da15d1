"""The frozen reference policy of the KL term (`train.kl_coef > 0`).

Which parameters (docs/algorithms.md#kl-penalty):

- `train.ref_path`: a local Hugging Face checkpoint of the policy's
  architecture (`check_path` compares them before the run takes its work
  directory), loaded in the policy's dtypes;
- otherwise RL's starting parameters: the model's own (the preset initialised
  from the seed, or `model.hf_path`) without a cold start, the cold start's
  last parameters with one.

Resume. A preset's initialisation and a checkpoint directory give the same
parameters to every run, so those references are rebuilt. The cold start's
last parameters are in no checkpoint that is sure to be kept (`checkpoint.keep`
rotates them out), so RL's start writes them once to `<workdir>/reference/`
(Orbax, sealed with a digest as a checkpoint step is), and a run resumed after
RL's start restores them from there: verified, checked finite, and a one-line
`CheckpointError` when damaged or missing.

Memory: one more copy of the parameters on the learner's devices, laid out as
the policy's (`Trainer.param_shardings`), from RL's start (the train loop hands
it to `RolloutSchedule.use_reference`); none when `kl_coef` is 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from golfjax import config as config_lib
from golfjax import process_groups as groups
from golfjax.models import config as model_config_lib
from golfjax.models import hf
from golfjax.train import checkpoint as checkpoint_lib

DIRECTORY = "reference"
# ModelConfig fields that change the program, not the function: they may differ.
_PROGRAM_FIELDS = ("remat", "attention", "attention_block", "mlp_chunk", "decode_layers",
                   "max_position", "param_dtype", "compute_dtype")


def policy_config(cfg: config_lib.RunConfig) -> model_config_lib.ModelConfig:
    """The policy's architecture as the run builds it, without loading weights."""
    if cfg.model.hf_path:
        with open(os.path.join(cfg.model.hf_path, "config.json")) as f:
            return hf.config_from_hf(json.load(f))
    return model_config_lib.get_preset(cfg.model.preset)


def check_path(cfg: config_lib.RunConfig) -> None:
    """Checks `train.ref_path` (when set) against the policy, reading configs only.

    Raises:
      ConfigError: the directory has no readable config.json, or its
        architecture differs from the policy's (naming the first field).
    """
    path = cfg.train.ref_path
    if not path:
        return
    try:
        with open(os.path.join(path, "config.json")) as f:
            ref = hf.config_from_hf(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        raise config_lib.ConfigError(
            f"config.train.ref_path={path!r}: not a Hugging Face checkpoint directory ({e})") from None
    policy = policy_config(cfg)
    for field in dataclasses.fields(policy):
        mine, theirs = getattr(policy, field.name), getattr(ref, field.name)
        if field.name not in _PROGRAM_FIELDS and mine != theirs:
            raise config_lib.ConfigError(
                f"config.train.ref_path={path!r}: its {field.name}={theirs!r} differs from the"
                f" policy's {mine!r}; the reference must share the policy's architecture")


def copy(params: Any) -> Any:
    """A copy of `params` on the same devices that outlives the donation of the train state."""
    return jax.block_until_ready(jax.tree.map(lambda x: x.copy(), params))


def load_path(path: str, model_config: model_config_lib.ModelConfig, mesh: Any) -> Any:
    """`train.ref_path`'s parameters, in the policy's dtypes and shardings."""
    _, params = hf.load(path, mesh=mesh, dtype=model_config.param_dtype,
                        compute_dtype=model_config.compute_dtype)
    return params


def save(workdir: str, params: Any) -> str:
    """Writes `params` to `<workdir>/reference/`, sealed with a digest; returns the path.

    Written beside and then moved into place, so a crash leaves the previous
    copy or none, never half of one. Every process calls it (Orbax writes the
    shards of each); process 0 seals and moves.
    """
    path = os.path.join(workdir, DIRECTORY)
    tmp = path + ".tmp"
    primary = groups.is_primary()
    if primary and os.path.exists(tmp):
        shutil.rmtree(tmp)
    _barrier("golfjax-reference-clean")
    with ocp.StandardCheckpointer() as writer:
        writer.save(tmp, params)
        writer.wait_until_finished()
    _barrier("golfjax-reference-written")
    if primary:
        checkpoint_lib.write_digest(tmp)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    _barrier("golfjax-reference-sealed")
    return path


def restore(workdir: str, abstract_params: Any) -> Any:
    """The reference saved by `save`, onto `abstract_params`' shapes and shardings.

    Raises:
      CheckpointError: it is missing, damaged (its digest), unreadable or not
        finite; one line naming the path.
    """
    path = os.path.join(workdir, DIRECTORY)
    why = " (the KL reference, RL's starting parameters, written when RL started)"
    if not os.path.isdir(path):
        raise checkpoint_lib.CheckpointError(f"{path} is missing{why}")
    try:
        if not checkpoint_lib.verify_digest(path):
            raise checkpoint_lib.CheckpointError(f"{path} has no digest")
    except checkpoint_lib.CheckpointError as e:
        raise checkpoint_lib.CheckpointError(f"{e}{why}") from None
    try:
        with ocp.StandardCheckpointer() as reader:
            params = reader.restore(path, abstract_params)
    except Exception as e:  # Orbax raises many kinds; all mean unreadable.
        raise checkpoint_lib.CheckpointError(f"{path} does not restore ({checkpoint_lib.one_line(e)}){why}") from None
    checkpoint_lib.check_finite(params, path)
    return params


def _barrier(name: str) -> None:
    groups.barrier(name)
