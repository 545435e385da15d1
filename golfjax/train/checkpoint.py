"""Checkpoints on Orbax: the train state, the data position and the config.

The work directory is the identity of a run. A checkpoint step holds three items:

- `state`: the `TrainState` pytree (params, optimizer state, step, RNG),
  restored directly onto the shardings of an abstract target;
- `data`: a JSON dict with the data iterator's position, so a resumed run sees
  exactly the prompts the uninterrupted run would have seen;
- `config`: the run's config as JSON, compared with the config of a resuming
  run (`config_diff`) so a conflicting restart stops with the differing keys.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash or a preemption mid-save leaves the previous step restorable; saves
run asynchronously (the train loop continues while arrays are written) and
`wait()` blocks until the last one is durable.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from golfjax.train.state import TrainState


class Checkpointer:
    """Saves every `save_every` steps, keeps the newest `keep` steps."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        save_every: int = 100,
        keep: int = 3,
        async_save: bool = True,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every={save_every}; expected >= 1")
        if keep < 1:
            raise ValueError(f"keep={keep}; expected >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                # A half-written step from a crash is left in a temporary
                # directory; clean it up rather than trip over it.
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "data", "config"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        data: dict[str, Any],
        config: dict[str, Any],
        *,
        force: bool = False,
    ) -> bool:
        """Starts saving `step` if it is due (or `force`); returns whether it did."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )

    def restore_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config saved with `step` (default: the latest), None if none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]

    def restore(
        self, abstract_state: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restores `(state, data)` onto `abstract_state`'s shapes and shardings.

        Args:
          abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s carrying the
            target shardings (e.g. `jax.eval_shape` of the init function, with
            shardings attached), so arrays land directly where they belong.
          step: which step; default the latest.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"]

    def wait(self) -> None:
        """Blocks until every started save is durable on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `tree` (arrays or structs) with `shardings` attached."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def config_diff(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs.

    Returns e.g. `["train.lr: 1e-06 -> 2e-06", "loss.name: 'vespo' -> 'gspo'"]`;
    empty when they agree. Keys present in only one side are reported too.
    """
    if isinstance(saved, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(saved) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                diffs.append(f"{name}: (absent) -> {new[key]!r}")
            elif key not in new:
                diffs.append(f"{name}: {saved[key]!r} -> (absent)")
            else:
                diffs.extend(config_diff(saved[key], new[key], name))
        return diffs
    # JSON turns tuples into lists; compare them as equal.
    if isinstance(saved, (list, tuple)) and isinstance(new, (list, tuple)):
        saved, new = list(saved), list(new)
    return [] if saved == new else [f"{prefix}: {saved!r} -> {new!r}"]
