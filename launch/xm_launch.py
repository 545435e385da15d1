"""XManager launcher: one work unit per item of a config's `get_sweep()`.

Print every job spec, without XManager, credentials or network:

    python -m launch.xm_launch --config=experiments/configs/golf.py:arith \
        --workdir_root=/tmp/golf_sweep --dry_run

Run the sweep on this machine (`pip install -e '.[launch]'`; work units run
concurrently, each `python -m experiments.main ... --workdir=ROOT/<id>`):

    python -m launch.xm_launch --config=experiments/configs/golf.py:arith \
        --workdir_root=/tmp/golf_sweep

On a Cloud TPU v5e-16 slice (4 hosts), or a v5p-32 (16 chips, 4 hosts), one
slice per work unit; `--workdir_root` must be mounted on every host:

    python -m launch.xm_launch --config=experiments/configs/golf.py:arith \
        --executor=tpu --tpu_type=v5litepod-16 --zone=us-west4-a \
        --project=my-project --workdir_root=/gcs/my-bucket/golf
    python -m launch.xm_launch ... --executor=tpu --tpu_type=v5p-32 --topology=2x2x4 \
        --zone=us-east5-a ...

`--aot` first compiles each work unit's programs for the slice on this
machine (`python -m golfjax.aot`, golfjax/aot/) and launches nothing if one
does not fit its HBM.

launch/jobs.py builds the specs (and explains the TPU steps); this file only
parses flags, prints, or hands the specs to XManager (`xm_local`): a local
work unit is the entry point itself, a TPU work unit is its `gcloud` script,
both run as `xm_local.Local` jobs with their output streamed and recorded by
XManager (experiment metadata in `~/.xmanager/experiments.sqlite3`, or the
database named by `--xm_db_yaml_config_path`). The launcher returns when every
work unit has ended and fails if any failed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

# XManager defines its own absl flags on import; they must exist before the
# command line is parsed. The dry run and the job specs never need it.
try:
    from xmanager import xm
    from xmanager import xm_local
except ImportError:
    xm = xm_local = None

from launch import jobs

_CONFIG = flags.DEFINE_string(
    "config", None, "Config file and variant, e.g. experiments/configs/golf.py:arith; "
    "its get_sweep(variant) lists the work units.")
_WORKDIR_ROOT = flags.DEFINE_string(
    "workdir_root", None, "Work unit <id> runs in <workdir_root>/<id>. TPU: an absolute "
    "path that every host mounts.")
_EXECUTOR = flags.DEFINE_enum("executor", "local", list(jobs.EXECUTORS),
                              "local: this machine; tpu: a Cloud TPU VM slice per work unit.")
_NAME = flags.DEFINE_string("name", None, "Experiment name (default: config and variant, "
                            "e.g. golf-arith); TPU resources are named <name>-<id>.")
_TPU_TYPE = flags.DEFINE_string("tpu_type", None, "TPU accelerator type, e.g. v5litepod-16 "
                                "or v5p-32.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. 4x4 (v5e) or 2x2x4 "
                                "(v5p); default: the accelerator type's.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices per work unit (>1: Multislice).")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
_ZONE = flags.DEFINE_string("zone", None, "Google Cloud zone with the TPU type.")
_RUNTIME_VERSION = flags.DEFINE_string("runtime_version", None, "TPU VM software version "
                                       "(default: per generation, see launch/jobs.py).")
_KEEP_TPU = flags.DEFINE_bool("keep_tpu", False, "Keep each TPU slice after its work unit.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print every job spec as JSON and launch nothing.")
_AOT = flags.DEFINE_bool(
    "aot", False, "Before creating any TPU, compile every work unit's programs for --tpu_type "
    "(python -m golfjax.aot; needs pip install -e '.[tpu-aot]') and stop if one does not fit.")
_SET = flags.DEFINE_multi_string(
    "set", [], "KEY=VALUE: a config override for every work unit (repeatable), passed on as "
    "--config.KEY=VALUE, e.g. --set=model.hf_path=/gcs/my-bucket/Qwen2.5-Math-1.5B.")
flags.mark_flags_as_required(["config", "workdir_root"])


def options_from_flags() -> jobs.LaunchOptions:
    return jobs.LaunchOptions(
        config=_CONFIG.value,
        workdir_root=_WORKDIR_ROOT.value,
        executor=_EXECUTOR.value,
        name=_NAME.value,
        tpu_type=_TPU_TYPE.value,
        topology=_TOPOLOGY.value,
        num_slices=_NUM_SLICES.value,
        project=_PROJECT.value,
        zone=_ZONE.value,
        runtime_version=_RUNTIME_VERSION.value,
        keep_tpu=_KEEP_TPU.value,
        overrides=tuple(_SET.value),
    )


def launch(plan: jobs.Plan) -> None:
    """Runs the plan's set-up, then every work unit as an XManager local job."""
    if xm is None:
        raise app.UsageError("launching needs XManager: pip install -e '.[launch]' "
                             "(--dry_run prints the job specs without it)")
    for step in plan.setup:
        subprocess.run(["bash", "-c", step.command], check=True)
    # Local units run `python -m experiments.main` from the repository root.
    os.chdir(jobs.REPO_ROOT)
    if plan.executor == "local":
        binary = sys.executable
        args = {unit.id: list(unit.argv[1:]) for unit in plan.work_units}
    else:
        binary = "/bin/bash"
        args = {unit.id: ["-c", unit.script()] for unit in plan.work_units}
    with xm_local.create_experiment(experiment_title=plan.name) as experiment:
        [executable] = experiment.package([
            xm.Packageable(executable_spec=xm.Binary(path=binary),
                           executor_spec=xm_local.Local.Spec()),
        ])
        for unit in plan.work_units:
            experiment.add(xm.Job(executable, executor=xm_local.Local(),
                                  args=args[unit.id], name=f"{plan.name}-{unit.id}"))


def check_ahead_of_time(plan: jobs.Plan) -> None:
    """Runs `golfjax.aot` for each distinct work unit (`jobs.aot_commands`);
    exits naming the first one that does not fit or cannot run on the slice."""
    for command in jobs.aot_commands(plan):
        print("$ " + shlex.join(command[1:]), flush=True)
        if subprocess.run(command, cwd=jobs.REPO_ROOT).returncode:
            sys.exit(f"--aot: golfjax.aot failed for {shlex.join(command[3:])} (its output above"
                     " says why); no TPU was created")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        plan = jobs.make_plan(options_from_flags())
        if _AOT.value and plan.tpu is None:
            raise ValueError("--aot compiles for --tpu_type: it needs --executor=tpu")
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if _AOT.value:
        check_ahead_of_time(plan)
    if _DRY_RUN.value:
        print(plan.to_json())
        return
    launch(plan)


if __name__ == "__main__":
    app.run(main)
