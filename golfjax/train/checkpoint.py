"""Checkpoints on Orbax: the train state, the data position and the config.

The work directory is the identity of a run. A checkpoint step holds three items:

- `state`: the `TrainState` pytree (params, optimizer state, step, RNG),
  restored directly onto the shardings of an abstract target;
- `data`: a JSON dict with the data iterator's position, so a resumed run sees
  exactly the prompts the uninterrupted run would have seen;
- `config`: the run's config as JSON, compared with the config of a resuming
  run (`config_changes`) so a conflicting restart stops with the differing keys.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash or a preemption mid-save leaves the previous step restorable; saves
run asynchronously (the train loop continues while arrays are written) and
`wait()` blocks until the last one is durable.

Checkpoints prove themselves: once Orbax has finalised a step, a background
thread seals it with a digest, `<step>/digest.json` (the size and sha256 of
every file of the step, written atomically), and a resuming run verifies it
before trusting the step. `newest_intact` walks the steps from the newest,
reports a damaged one (a truncated, missing or altered file) in one line
naming its path and the cause, and falls back to the newest intact step; when
none is intact it raises `CheckpointError` with that one line.
`restore_newest` walks the same way and also restores each candidate's state:
a step whose state does not restore, or restores non-finite values, is damaged
too, and the walk goes on to the next older one. A step without a digest (its
run died between Orbax's finalisation and the seal, or it was written before
digests existed) is said so and verified by that restore alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from golfjax import process_groups as groups
from golfjax import sharding
from golfjax.train.state import TrainState

DIGEST_NAME = "digest.json"
# Config keys a resumed run may change: they only lengthen a run or change
# what is evaluated, never what was trained. A key ending in "." is a prefix.
RESUMABLE_KEYS = ("train.steps", "eval.")


class CheckpointError(RuntimeError):
    """A checkpoint step cannot be trusted; the message is one line naming its
    path and the cause."""


@dataclasses.dataclass(frozen=True)
class Found:
    """The newest intact step: its number, config and data position."""

    step: int
    config: dict[str, Any]
    data: dict[str, Any]
    verified: bool  # False: the step has no digest and was read unverified.
    state: Any = None  # The restored train state (`restore_newest` only).


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _agree(value: int) -> int:
    """Multi-process: the group primary's `value`, on every process of the group
    (golfjax/process_groups.py: the learner's processes in a job that has a
    rollout group, else all)."""
    return int(groups.broadcast(np.int32(value)))


def _all(ok: bool) -> bool:
    """Multi-process: whether `ok` holds on every process of the group."""
    return bool(np.all(groups.allgather(np.int32(ok))))


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Silences Orbax's own error logs (a traceback per failing item) while a
    restore that may fail is tried; its failure is reported in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def one_line(e: BaseException) -> str:
    """`e` as `Type: message` on one line (at most 300 characters of message)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def _stamp(directory: str) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, modification time) of every file under `directory`."""
    stamp = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            info = os.stat(path)
            stamp.append((os.path.relpath(path, directory), info.st_size, info.st_mtime_ns))
    return tuple(stamp)


def file_digests(directory: str) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size", "sha256"}}` of every file under `directory`
    except the digest itself."""
    files = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel == DIGEST_NAME:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            files[rel] = {"size": os.path.getsize(path), "sha256": h.hexdigest()}
    return files


def write_digest(directory: str) -> None:
    """Seals the step `directory`: writes `digest.json` atomically."""
    digest = {"version": 1, "files": file_digests(directory)}
    path = os.path.join(directory, DIGEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(digest, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify_digest(directory: str) -> bool:
    """Checks the step `directory` against its digest.

    Returns:
      True if it matches; False if the step has no digest.

    Raises:
      CheckpointError: naming the first damaged file and how it differs.
    """
    path = os.path.join(directory, DIGEST_NAME)
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            expected = json.load(f)["files"]
        if not isinstance(expected, dict):
            raise TypeError(f"'files' is a {type(expected).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({one_line(e)})") from None
    actual = file_digests(directory)
    for rel in sorted(expected):
        want, got = expected[rel], actual.get(rel)
        where = os.path.join(directory, rel)
        if got is None:
            raise CheckpointError(f"{where} is missing")
        if got["size"] != want.get("size"):
            raise CheckpointError(
                f"{where} has {got['size']} bytes, its digest says {want.get('size')}"
                + (" (truncated)" if got["size"] < (want.get("size") or 0) else ""))
        if got["sha256"] != want.get("sha256"):
            raise CheckpointError(f"{where} differs from its digest (sha256 mismatch: altered bytes)")
    return True


def check_finite(state: Any, where: str) -> None:
    """Raises `CheckpointError` if a floating leaf of `state` holds NaN or inf."""
    leaves = [x for x in jax.tree.leaves(state)
              if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return
    finite = jax.jit(lambda xs: jnp.stack([jnp.isfinite(x).all() for x in xs]))(leaves)
    finite = np.asarray(sharding.global_to_host(finite))
    if not finite.all():
        paths = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
                 if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)]
        bad = [p for p, ok in zip(paths, finite) if not ok]
        raise CheckpointError(
            f"{where} holds non-finite values in {len(bad)} array(s), e.g. state{bad[0]}")


class Checkpointer:
    """Saves every `save_every` steps, keeps the newest `keep` steps, seals
    each saved step with a digest (process 0; see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        save_every: int = 100,
        keep: int = 3,
        async_save: bool = True,
        primary: bool | None = None,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every={save_every}; expected >= 1")
        if keep < 1:
            raise ValueError(f"keep={keep}; expected >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        self.primary = groups.is_primary() if primary is None else primary
        members = groups.members()
        # A one-process group of a multi-process job (golfjax/parallel/):
        # its arrays are process-local, which Orbax saves only from the host.
        self._host_local = len(members) == 1 < jax.process_count()
        multiprocessing = None
        if len(members) < jax.process_count():
            # Orbax's barriers span only this group's processes (a rollout
            # group never checkpoints); it then leaves the directory to us.
            if self.primary:
                os.makedirs(self.directory, exist_ok=True)
            groups.barrier("checkpoint-directory")
            multiprocessing = ocp.options.MultiprocessingOptions(
                primary_host=members[0], active_processes=set(members))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                # A half-written step from a crash is left in a temporary
                # directory; clean it up rather than trip over it.
                cleanup_tmp_directories=True,
                **({"multiprocessing_options": multiprocessing, "create": False} if multiprocessing else {}),
            ),
            item_names=("state", "data", "config"),
        )
        self._sealer: threading.Thread | None = None
        self._seal_error: BaseException | None = None
        # Each step's digest verdict from a walk, with its files' stamp (`_readable`).
        self._verdicts: dict[int, tuple[Any, int, str]] = {}

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

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
        """Starts saving `step` if it is due (or `force`); returns whether it did.

        The digest is written by a background thread once Orbax has finalised
        the step; the next save, `wait()` and `close()` wait for it.
        """
        if not (force or self._manager.should_save(step)):
            return False
        self._join_sealer()
        if self._host_local:  # Orbax refuses a job's process-local arrays: saved as host copies.
            state = jax.device_get(state)
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )
        if saved and self.primary:
            self._sealer = threading.Thread(
                target=self._seal, args=(step,), name=f"golfjax-seal-{step}", daemon=True)
            self._sealer.start()
        return saved

    def _seal(self, step: int) -> None:
        try:
            self._manager.wait_until_finished()
            write_digest(self.step_dir(step))
        except BaseException as e:  # Reported by the main thread (`_join_sealer`).
            self._seal_error = e

    def _join_sealer(self) -> None:
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        if self._seal_error is not None:
            e, self._seal_error = self._seal_error, None
            # The step stays restorable, unverified; the save's own error (if
            # it failed) is raised by Orbax on the main thread.
            _say(f"warning: {self.directory}: a checkpoint was not sealed with a digest ({one_line(e)})")

    def verify(self, step: int) -> bool:
        """Checks `step` against its digest: True if it matches, False if it has
        none; raises `CheckpointError` if it is damaged."""
        directory = self.step_dir(step)
        if not os.path.isdir(directory):
            raise CheckpointError(f"{directory} is missing")
        return verify_digest(directory)

    def newest_intact(self, report: Callable[[str], None] = _say, *,
                      set_aside: bool = True) -> Found | None:
        """The newest step that verifies and whose config and data items read,
        None when there is no step at all.

        Each damaged step is reported in one line (`report`); multi-process,
        process 0 verifies and every process takes its verdict. With
        `set_aside` the damaged steps newer than the one found are moved out
        of the way (`_set_aside`), as a resuming run needs; a reader that
        holds no lock (an export) passes False and moves nothing.

        Raises:
          CheckpointError: steps exist but none is intact (the newest one's
            damage in one line, then a count of the others).
        """
        return self._newest(report, set_aside, abstract_state=None)

    def restore_newest(
        self, abstract_state: Callable[[int], TrainState], report: Callable[[str], None] = _say, *,
        set_aside: bool = True,
    ) -> Found | None:
        """`newest_intact`, where a step is intact only if its state restores
        too (finite, onto `abstract_state(step)`); the `Found` holds that state.

        A step that `newest_intact` accepted (an unsealed one, or one whose
        arrays Orbax cannot read) may fail here: it is reported and set aside
        like any damaged step, and the walk goes on to the next older step.
        Digests verified by an earlier walk of this `Checkpointer` are not
        hashed again.

        Raises:
          CheckpointError: steps exist but none restores.
        """
        return self._newest(report, set_aside, abstract_state=abstract_state)

    def _readable(self, step: int) -> tuple[int, str, Any, Any]:
        """(verdict, cause, config, data) of `step`: -1 damaged (cause says
        why), 0 no digest, 1 verified. A digest verified by an earlier walk is
        not hashed again while the step's files keep their sizes and times."""
        verdict, cause, config, data = -1, "", None, None
        if self.primary or not groups.is_multiprocess():
            stamp = _stamp(self.step_dir(step))
            cached = self._verdicts.get(step)
            if cached is not None and cached[0] == stamp:
                _, verdict, cause = cached
            else:
                try:
                    verdict = int(self.verify(step))
                except CheckpointError as e:
                    cause = str(e)
                self._verdicts[step] = (stamp, verdict, cause)
        verdict = _agree(verdict)
        if verdict >= 0:
            try:
                config = self.restore_config(step)
                data = self._restore_json(step, "data")
            except CheckpointError as e:
                verdict, cause = -1, str(e)
        if verdict < 0:
            cause = cause or f"{self.step_dir(step)} is damaged (process 0 says so)"
        return verdict, cause, config, data

    def _newest(self, report: Callable[[str], None], set_aside: bool,
                abstract_state: Callable[[int], TrainState] | None) -> Found | None:
        steps = sorted(self.all_steps(), reverse=True)
        damaged: list[str] = []
        for i, step in enumerate(steps):
            verdict, cause, config, data = self._readable(step)
            state = None
            if verdict >= 0 and abstract_state is not None:
                try:
                    state, _ = self.restore(abstract_state(step), step)
                except CheckpointError as e:
                    cause = str(e)
                if not _all(not cause):
                    verdict, cause = -1, cause or f"{self.step_dir(step)} does not restore on another process"
            if verdict < 0:
                damaged.append(cause)
                older = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step"
                report(f"damaged checkpoint: {cause}; {older}")
                continue
            if not verdict:
                report(f"checkpoint {self.step_dir(step)} has no digest (its save was not sealed);"
                       " restoring it unverified")
            if i and set_aside:
                self._set_aside(steps[:i], report)
            return Found(step=step, config=config, data=data, verified=bool(verdict), state=state)
        if damaged:
            others = f" (and {len(damaged) - 1} older damaged step(s))" if len(damaged) > 1 else ""
            raise CheckpointError(f"no intact checkpoint in {self.directory}: {damaged[0]}{others}")
        return None

    def _set_aside(self, steps: list[int], report: Callable[[str], None]) -> None:
        """Moves damaged `steps` out of the checkpoint directory, into
        `damaged_checkpoints/` beside it, so that the resumed run can save
        those step numbers again; nothing is deleted."""
        aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        if self.primary:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, str(step))
                n = 1
                while os.path.exists(target):
                    target, n = os.path.join(aside, f"{step}.{n}"), n + 1
                os.replace(self.step_dir(step), target)
                report(f"moved damaged step {step} to {target}")
        _agree(0)  # Every process reloads after process 0 has moved them.
        self._manager.reload()

    def _restore_json(self, step: int, item: str) -> Any:
        try:
            with _quiet_orbax():
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
            value = restored[item]
        except Exception as e:  # Orbax raises many kinds; all mean unreadable.
            raise CheckpointError(
                f"{os.path.join(self.step_dir(step), item)} is unreadable ({one_line(e)})") from None
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{os.path.join(self.step_dir(step), item)} holds a {type(value).__name__}, not a dict")
        return value

    def restore_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config saved with `step` (default: the latest), None if none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self._restore_json(step, "config")

    def restore(
        self, abstract_state: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restores `(state, data)` onto `abstract_state`'s shapes and shardings.

        Args:
          abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s carrying the
            target shardings (e.g. `jax.eval_shape` of the init function, with
            shardings attached), so arrays land directly where they belong.
          step: which step; default the latest. `newest_intact` picks the step
            to resume; this reads it and checks that the state is finite.

        Raises:
          FileNotFoundError: there is no checkpoint.
          CheckpointError: the step does not read, or its state is not finite.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        where = self.step_dir(step)
        target = abstract_state
        if self._host_local:  # Saved as host copies (`save`): read as such, then placed.
            target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), abstract_state)
        try:
            with _quiet_orbax():
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            state = restored["state"]
            if self._host_local:
                state = jax.device_put(state, jax.tree.map(lambda s: s.sharding, abstract_state))
        except Exception as e:  # Orbax raises many kinds; all mean unreadable.
            raise CheckpointError(f"{where} does not restore ({one_line(e)})") from None
        check_finite(state, os.path.join(where, "state"))
        return state, restored["data"]

    def wait(self) -> None:
        """Blocks until every started save is durable on disk and sealed."""
        self._manager.wait_until_finished()
        self._join_sealer()

    def close(self) -> None:
        self.wait()
        self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `tree` (arrays or structs) with `shardings` attached."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _diff_items(saved: Any, new: Any, prefix: str) -> list[tuple[str, str]]:
    if isinstance(saved, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(saved) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                diffs.append((name, f"{name}: (absent) -> {new[key]!r}"))
            elif key not in new:
                diffs.append((name, f"{name}: {saved[key]!r} -> (absent)"))
            else:
                diffs.extend(_diff_items(saved[key], new[key], name))
        return diffs
    # JSON turns tuples into lists; compare them as equal.
    if isinstance(saved, (list, tuple)) and isinstance(new, (list, tuple)):
        saved, new = list(saved), list(new)
    return [] if saved == new else [(prefix, f"{prefix}: {saved!r} -> {new!r}")]


def config_diff(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs.

    Returns e.g. `["train.lr: 1e-06 -> 2e-06", "loss.name: 'vespo' -> 'gspo'"]`;
    empty when they agree. Keys present in only one side are reported too.
    """
    return [text for _, text in _diff_items(saved, new, prefix)]


def config_changes(
    saved: Any, new: Any, resumable: Sequence[str] = RESUMABLE_KEYS
) -> tuple[list[str], list[str]]:
    """`config_diff`, split into `(allowed, refused)` changes for a resume.

    A change is allowed when its dotted key is one of `resumable` or starts
    with one of its prefixes (entries ending in "."): by default `train.steps`
    and `eval.*`, which lengthen a run (or change what is evaluated) without
    changing anything already trained.
    """
    allowed, refused = [], []
    for key, text in _diff_items(saved, new, ""):
        ok = any(key.startswith(r) if r.endswith(".") else key == r for r in resumable)
        (allowed if ok else refused).append(text)
    return allowed, refused
