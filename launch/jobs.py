"""Job specs of a sweep: one work unit per `get_sweep()` item, as plain data.

    plan = make_plan(LaunchOptions(config="experiments/configs/golf.py:arith",
                                   workdir_root="/tmp/golf_sweep"))
    print(plan.to_json())

Everything here is a function of its arguments and of the config file it
reads: no XManager, no network, no credentials. `launch/xm_launch.py --dry_run`
prints these specs, and the tests check them, without `golfjax[launch]`.

Work unit `i` (numbered from 1, as XManager numbers them) runs the one entry
point of every experiment with the sweep item's keys as dotted overrides:

    python -m experiments.main --config=FILE:VARIANT --workdir=ROOT/i --config.seed=0

Executors:

- `local`: that command, on this machine, from the repository root.
- `tpu`: a bash script of `gcloud` steps (launch/tpu.py), run on the
  launching machine, that requests a TPU VM slice per work unit, copies the
  repository's committed tree (`git archive HEAD`, made once per experiment,
  the plan's `setup`) to every host and runs the same command on every host
  with `--multihost=on`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import posixpath
import re
import shlex
import sys
import tempfile
import types
from collections.abc import Mapping
from typing import Any

from launch import tpu as tpu_lib
from launch.tpu import Step

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINT = ("-m", "experiments.main")
EXECUTORS = ("local", "tpu")


def split_config_arg(config: str) -> tuple[str, str | None]:
    """`"experiments/configs/golf.py:arith,seed=1"` -> (path, `"arith,seed=1"`)."""
    path, sep, variant = config.partition(".py:")
    if sep:
        return path + ".py", variant
    return config, None


def load_config_module(path: str) -> types.ModuleType:
    """Imports a config file by path, as `--config` of experiments/main.py does."""
    if not os.path.isfile(path):
        raise ValueError(f"--config: no config file at {path!r}")
    # Config files import `experiments.configs.common`, as they do when
    # experiments/main.py loads them from the repository root.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(f"_golfjax_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flatten(item: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"steps": 4}, "seed": 1}` -> `{"train.steps": 4, "seed": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in item.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _has_key(config: Any, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def parse_overrides(overrides: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`["model.hf_path=/ckpt", "train.steps=5"]` -> a dict; values stay strings
    (experiments/main.py parses `--config.KEY=VALUE` by the key's type).

    Raises:
      ValueError naming the `--set` value without `=` or set twice.
    """
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set={item!r}: expected KEY=VALUE, e.g. model.hf_path=/ckpt")
        if key in parsed:
            raise ValueError(f"--set: {key!r} is set twice")
        parsed[key] = value
    return parsed


def load_sweep(config: str, common: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The config's `get_sweep(variant)`, flattened to dotted keys and checked,
    each item preceded by the `common` overrides (`--set`).

    Raises:
      ValueError naming `--config` when the file is missing or has no
      `get_sweep`, naming the work unit and key when a sweep key is not a
      key of `get_config(variant)`, and naming the `--set` key when it is not
      one or when a sweep item sets it too.
    """
    common = dict(common or {})
    path, variant = split_config_arg(config)
    module = load_config_module(path)
    for fn in ("get_config", "get_sweep"):
        if not callable(getattr(module, fn, None)):
            raise ValueError(f"--config: {path} defines no {fn}()")
    base = module.get_config(variant)
    sweep = [flatten(item) for item in module.get_sweep(variant)]
    if not sweep:
        raise ValueError(f"--config: {path} get_sweep({variant!r}) returned no work units")
    for key in common:
        if not _has_key(base, key):
            raise ValueError(f"--set: {key!r} is not a key of get_config({variant!r})")
    for wid, item in enumerate(sweep, start=1):
        for key in item:
            if not _has_key(base, key):
                raise ValueError(f"--config: work unit {wid} of get_sweep({variant!r}) sets "
                                 f"{key!r}, which is not a key of get_config({variant!r})")
            if key in common:
                raise ValueError(f"--set: {key!r} is also set by work unit {wid} of "
                                 f"get_sweep({variant!r})")
    return [{**common, **item} for item in sweep]


def format_override(value: Any) -> str:
    """A value as `--config.KEY=VALUE` spells it (ml_collections parses it by type)."""
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    return [f"--config.{key}={format_override(value)}" for key, value in overrides.items()]


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """The launcher's flags (see launch/xm_launch.py for each one's meaning)."""

    config: str
    workdir_root: str
    executor: str = "local"
    name: str | None = None
    python: str = sys.executable
    tpu_type: str | None = None
    topology: str | None = None
    num_slices: int = 1
    project: str | None = None
    zone: str | None = None
    runtime_version: str | None = None
    keep_tpu: bool = False
    archive: str | None = None
    # `KEY=VALUE` overrides for every work unit (`--set`), e.g.
    # "model.hf_path=/gcs/bucket/Qwen2.5-Math-1.5B".
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One sweep item: where it runs, what it runs.

    Attributes:
      id: the XManager work unit id, from 1.
      overrides: the sweep item, dotted keys.
      workdir: `<workdir_root>/<id>`, the run's identity.
      argv: the entry point; run as is (local) or on every TPU host (tpu).
      cwd: the directory `argv` runs in (the repository root; on TPU hosts the
        copied tree).
      steps: TPU only: the `gcloud` steps, in order.
      cleanup: TPU only: the command that deletes the slice, run on exit.
    """

    id: int
    overrides: dict[str, Any]
    workdir: str
    argv: tuple[str, ...]
    cwd: str
    steps: tuple[Step, ...] = ()
    cleanup: Step | None = None

    def script(self) -> str:
        """The TPU steps as one bash script that deletes the slice on exit."""
        lines = ["set -euo pipefail"]
        if self.cleanup is not None:
            lines.append(f"trap {shlex.quote(self.cleanup.command)} EXIT")
        lines += [f"# {step.name}\n{step.command}" for step in self.steps]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything `xm_launch` would launch; `to_json()` is what `--dry_run` prints."""

    name: str
    executor: str
    config: str
    setup: tuple[Step, ...]
    work_units: tuple[WorkUnit, ...]
    tpu: tpu_lib.TpuSlice | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for unit, spec in zip(self.work_units, out["work_units"]):
            spec["command"] = shlex.join(unit.argv)
            if unit.steps:
                spec["script"] = unit.script()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_NAME_RE = re.compile(r"[a-z][a-z0-9-]*")


def default_name(config: str) -> str:
    """`experiments/configs/golf.py:smoke` -> `golf-smoke`."""
    path, variant = split_config_arg(config)
    stem = pathlib.Path(path).stem
    variant = (variant or "").split(",")[0]
    raw = f"{stem}-{variant}" if variant else stem
    return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")


def _config_in_repo(config: str) -> str:
    """The config path relative to the repository root (TPU hosts run the copy)."""
    path, variant = split_config_arg(config)
    resolved = pathlib.Path(path).resolve()
    try:
        relative = resolved.relative_to(REPO_ROOT)
    except ValueError:
        raise ValueError(f"--config: {path!r} is outside the repository; TPU hosts run a "
                         "copy of the repository, so the config must be in it") from None
    return f"{relative.as_posix()}:{variant}" if variant is not None else relative.as_posix()


def make_plan(options: LaunchOptions) -> Plan:
    """The job spec of every work unit of `options.config`'s sweep.

    Raises:
      ValueError naming the offending flag.
    """
    if options.executor not in EXECUTORS:
        raise ValueError(f"--executor={options.executor!r}: expected one of {', '.join(EXECUTORS)}")
    if not options.workdir_root:
        raise ValueError("--workdir_root is required: each work unit runs in <workdir_root>/<id>")
    sweep = load_sweep(options.config, parse_overrides(options.overrides))
    name = options.name or default_name(options.config)
    if not _NAME_RE.fullmatch(name) or len(name) > 40:
        raise ValueError(f"--name={name!r}: expected lowercase letters, digits and hyphens, "
                         "starting with a letter, at most 40 characters (TPU names derive from it)")
    if options.executor == "local":
        return _local_plan(options, name, sweep)
    return _tpu_plan(options, name, sweep)


def _local_plan(options: LaunchOptions, name: str, sweep: list[dict[str, Any]]) -> Plan:
    # Absolute paths: the units run from the repository root.
    path, variant = split_config_arg(options.config)
    config = str(pathlib.Path(path).resolve()) + (f":{variant}" if variant is not None else "")
    root = os.path.abspath(options.workdir_root)
    units = []
    for wid, overrides in enumerate(sweep, start=1):
        workdir = os.path.join(root, str(wid))
        argv = (options.python, *ENTRY_POINT, f"--config={config}", f"--workdir={workdir}",
                *override_flags(overrides))
        units.append(WorkUnit(wid, overrides, workdir, argv, str(REPO_ROOT)))
    return Plan(name, "local", config, (), tuple(units))


def _gcloud_location(options: LaunchOptions) -> list[str]:
    location = [f"--zone={options.zone}"]
    if options.project:
        location.append(f"--project={options.project}")
    return location


def _tpu_plan(options: LaunchOptions, name: str, sweep: list[dict[str, Any]]) -> Plan:
    tpu = tpu_lib.make_tpu_slice(options.tpu_type, topology=options.topology,
                         num_slices=options.num_slices, runtime_version=options.runtime_version)
    if not options.zone:
        raise ValueError("--executor=tpu needs --zone (e.g. us-west4-a for v5e, us-east5-a for v5p)")
    root = options.workdir_root
    if "://" in root or not posixpath.isabs(root):
        raise ValueError(
            f"--workdir_root={root!r}: TPU hosts need an absolute path on a file system "
            "that every host mounts (e.g. a Cloud Storage FUSE mount, /gcs/BUCKET/DIR): "
            "every process writes its checkpoint shards there"
        )
    config = _config_in_repo(options.config)
    archive = options.archive or os.path.join(tempfile.gettempdir(), f"{name}-src.tar.gz")
    setup = (Step("package", shlex.join(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz", "-o", archive, "HEAD"])),)
    location = _gcloud_location(options)
    units = []
    for wid, overrides in enumerate(sweep, start=1):
        workdir = posixpath.join(root, str(wid))
        argv = ("python3", *ENTRY_POINT, f"--config={config}", f"--workdir={workdir}",
                "--multihost=on", *override_flags(overrides))
        steps, cleanup = tpu_lib.tpu_steps(f"{name}-{wid}", tpu, location, archive, argv,
                                    keep=options.keep_tpu)
        units.append(WorkUnit(wid, overrides, workdir, argv, "golfjax", steps, cleanup))
    return Plan(name, "tpu", config, setup, tuple(units), tpu)


def aot_commands(plan: Plan, python: str = sys.executable) -> list[list[str]]:
    """`python -m golfjax.aot` for each distinct run of a TPU plan, to run from
    the repository root before any slice exists: it compiles the run's
    programs for the plan's slice and fails when one does not fit. Work units
    that differ only in their seed compile the same programs: one check each.

    Raises:
      ValueError: the plan is not a TPU plan (`--aot` needs `--executor=tpu`).
    """
    if plan.tpu is None:
        raise ValueError("--aot compiles for --tpu_type: it needs --executor=tpu")
    tpu = plan.tpu
    topology = f"{tpu.generation}:{tpu.topology}" if tpu.topology else tpu.accelerator_type
    commands: list[list[str]] = []
    for unit in plan.work_units:
        config = [a for a in unit.argv if a.startswith("--config") and not a.startswith("--config.seed=")]
        command = [python, "-m", "golfjax.aot", *config, f"--topology={topology}",
                   f"--num_slices={tpu.num_slices}"]
        if command not in commands:
            commands.append(command)
    return commands

