"""launch/jobs.py: a config's sweep becomes one job spec per work unit."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from launch import jobs

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLF = "experiments/configs/golf.py"


def _sweep_config(tmp_path, sweep: str) -> str:
    """A config file with golf.py's configs and the given `get_sweep()` body."""
    path = tmp_path / "sweep.py"
    path.write_text(
        "from experiments.configs import golf\n"
        "get_config = golf.get_config\n"
        f"def get_sweep(arg=None):\n    return {sweep}\n"
    )
    return str(path)


def test_split_config_arg():
    assert jobs.split_config_arg(f"{GOLF}:arith,seed=1") == (GOLF, "arith,seed=1")
    assert jobs.split_config_arg(GOLF) == (GOLF, None)


def test_golf_sweep_is_three_seeds():
    assert jobs.load_sweep(f"{GOLF}:smoke") == [{"seed": 0}, {"seed": 1}, {"seed": 2}]


def test_nested_sweep_items_flatten_to_dotted_keys(tmp_path):
    config = _sweep_config(tmp_path, '[{"seed": 4, "train": {"steps": 3}, "sampling.group_size": 2}]')
    assert jobs.load_sweep(f"{config}:smoke") == [{"seed": 4, "train.steps": 3, "sampling.group_size": 2}]


def test_unknown_sweep_key_names_the_work_unit_and_key(tmp_path):
    config = _sweep_config(tmp_path, '[{"seed": 0}, {"train.stepz": 3}]')
    with pytest.raises(ValueError, match=r"work unit 2 .* 'train.stepz'"):
        jobs.load_sweep(f"{config}:smoke")


def test_missing_config_and_missing_get_sweep_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--config: no config file"):
        jobs.load_sweep(str(tmp_path / "absent.py"))
    path = tmp_path / "nosweep.py"
    path.write_text("def get_config(arg=None):\n    return {}\n")
    with pytest.raises(ValueError, match=r"--config: .* defines no get_sweep\(\)"):
        jobs.load_sweep(str(path))


def test_format_override():
    assert jobs.override_flags({"seed": 3, "golf.enabled": False, "sampling.prompt_buckets": [32, 64],
                                "train.loss": "ppo_clip", "optimizer.lr": 1e-4}) == [
        "--config.seed=3", "--config.golf.enabled=False", "--config.sampling.prompt_buckets=(32, 64)",
        "--config.train.loss=ppo_clip", "--config.optimizer.lr=0.0001",
    ]


def test_local_plan_has_one_work_unit_per_sweep_item(tmp_path):
    plan = jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:smoke", workdir_root=str(tmp_path)))
    assert plan.name == "golf-smoke" and plan.executor == "local" and plan.setup == ()
    assert [u.id for u in plan.work_units] == [1, 2, 3]
    for seed, unit in enumerate(plan.work_units):
        assert unit.workdir == str(tmp_path / str(unit.id))
        assert unit.cwd == str(ROOT)
        assert unit.argv == (
            sys.executable, "-m", "experiments.main", f"--config={ROOT / GOLF}:smoke",
            f"--workdir={unit.workdir}", f"--config.seed={seed}",
        )
    spec = json.loads(plan.to_json())
    assert spec["work_units"][0]["command"].endswith("--config.seed=0")


def test_plan_errors_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--workdir_root"):
        jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:smoke", workdir_root=""))
    with pytest.raises(ValueError, match="--executor='gke'"):
        jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:smoke", workdir_root="/w", executor="gke"))
    with pytest.raises(ValueError, match="--name='Golf_1'"):
        jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:smoke", workdir_root="/w", name="Golf_1"))


def test_tpu_plan_runs_the_repository_copy_on_every_host():
    plan = jobs.make_plan(jobs.LaunchOptions(
        config=f"{GOLF}:arith", workdir_root="/gcs/bucket/golf", executor="tpu",
        tpu_type="v5litepod-16", zone="us-west4-a", project="proj", archive="/tmp/src.tar.gz",
    ))
    assert plan.config == f"{GOLF}:arith"  # Relative: the hosts run the copied tree.
    assert plan.tpu.hosts == 4 and plan.tpu.processes == 4
    [setup] = plan.setup
    assert setup.command == f"git -C {ROOT} archive --format=tar.gz -o /tmp/src.tar.gz HEAD"
    unit = plan.work_units[1]
    assert unit.argv == ("python3", "-m", "experiments.main", f"--config={GOLF}:arith",
                         "--workdir=/gcs/bucket/golf/2", "--multihost=on", "--config.seed=1")
    assert unit.cleanup.command.startswith("gcloud compute tpus queued-resources delete golf-arith-2 ")


def test_aot_checks_each_distinct_run_once_for_the_plans_slice():
    options = dict(workdir_root="/gcs/bucket/vespo", executor="tpu", tpu_type="v5p-32",
                   topology="2x2x4", zone="us-east5-a", overrides=("model.preset=qwen3-8b",))
    # Three seeds of one run: one check, with the run's flags and the slice.
    [command] = jobs.aot_commands(jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:arith", **options)))
    assert command[1:] == ["-m", "golfjax.aot", f"--config={GOLF}:arith", "--config.model.preset=qwen3-8b",
                           "--topology=v5p:2x2x4", "--num_slices=1"]
    # VESPO's sweep: 4 losses x 4 staleness x 2 seeds, 16 distinct runs.
    vespo = jobs.make_plan(jobs.LaunchOptions(config="experiments/configs/vespo.py", **options))
    commands = jobs.aot_commands(vespo)
    assert len(vespo.work_units) == 32 and len(commands) == 16
    assert all(not any(a.startswith("--config.seed=") for a in c) for c in commands)
    assert jobs.aot_commands(jobs.make_plan(jobs.LaunchOptions(
        config=f"{GOLF}:arith", **{**options, "topology": None})))[0][-2] == "--topology=v5p-32"
    local = jobs.make_plan(jobs.LaunchOptions(config=f"{GOLF}:arith", workdir_root="/tmp/golf"))
    with pytest.raises(ValueError, match="--aot compiles for --tpu_type: it needs --executor=tpu"):
        jobs.aot_commands(local)


def test_tpu_plan_checks_its_flags(tmp_path):
    base = dict(config=f"{GOLF}:arith", executor="tpu", tpu_type="v5p-32", zone="us-east5-a")
    with pytest.raises(ValueError, match="--workdir_root='gs://b/golf'"):
        jobs.make_plan(jobs.LaunchOptions(workdir_root="gs://b/golf", **base))
    with pytest.raises(ValueError, match="--workdir_root='golf'"):
        jobs.make_plan(jobs.LaunchOptions(workdir_root="golf", **base))
    with pytest.raises(ValueError, match="--zone"):
        jobs.make_plan(jobs.LaunchOptions(workdir_root="/mnt/golf", **{**base, "zone": None}))
    config = _sweep_config(tmp_path, '[{"seed": 0}]')  # Outside the repository.
    with pytest.raises(ValueError, match="--config: .* outside the repository"):
        jobs.make_plan(jobs.LaunchOptions(workdir_root="/mnt/golf", **{**base, "config": config}))


@pytest.mark.slow
def test_local_work_unit_runs_as_specified(tmp_path):
    # The command of a one-item sweep, run as the local executor runs it: from
    # its cwd, in its own process. A short GOLF run: no cold start, one step.
    config = _sweep_config(
        tmp_path, '[{"seed": 0, "cold_start.steps": 0, "train.steps": 1, "eval.num_problems": 4}]')
    plan = jobs.make_plan(jobs.LaunchOptions(config=f"{config}:smoke", workdir_root=str(tmp_path / "root")))
    [unit] = plan.work_units
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(unit.argv, cwd=unit.cwd, env=env | {"JAX_PLATFORMS": "cpu"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "root" / "1" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1] and "golf/injection_rate" in records[-1]


def test_overrides_parse_as_experiments_main_parses_them(tmp_path):
    config = _sweep_config(tmp_path, '[{"seed": 7, "eval.samples": 3, '
                                     '"golf.enabled": False, "optimizer.lr": 3e-4, "train.loss": "gspo"}]')
    plan = jobs.make_plan(jobs.LaunchOptions(config=f"{config}:smoke", workdir_root=str(tmp_path)))
    [unit] = plan.work_units
    # experiments/main.py's two flags, parsed from the unit's arguments.
    argv = ["main", *unit.argv[3:]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    parsed = values.config
    assert parsed.seed == 7 and parsed.eval.samples == 3
    assert parsed.golf.enabled is False and parsed.optimizer.lr == 3e-4 and parsed.train.loss == "gspo"
    assert values.workdir == str(tmp_path / "1")


def test_set_overrides_every_work_unit_and_names_bad_keys(tmp_path):
    config = _sweep_config(tmp_path, '[{"seed": 0}, {"seed": 1}]')
    plan = jobs.make_plan(jobs.LaunchOptions(
        config=f"{config}:smoke", workdir_root=str(tmp_path),
        overrides=("model.hf_path=/ckpt/qwen", "train.steps=7")))
    for unit in plan.work_units:
        assert unit.argv[-3:-1] == ("--config.model.hf_path=/ckpt/qwen", "--config.train.steps=7")
    assert [u.overrides["seed"] for u in plan.work_units] == [0, 1]
    for overrides, message in (
            (("model.hf_pth=/x",), r"--set: 'model.hf_pth' is not a key of get_config\('smoke'\)"),
            (("seed=3",), r"--set: 'seed' is also set by work unit 1"),
            (("train.steps",), r"--set='train.steps': expected KEY=VALUE"),
            (("train.steps=1", "train.steps=2"), r"--set: 'train.steps' is set twice")):
        with pytest.raises(ValueError, match=message):
            jobs.make_plan(jobs.LaunchOptions(config=f"{config}:smoke", workdir_root=str(tmp_path),
                                              overrides=overrides))


def test_a_variant_naming_its_seed_is_one_work_unit_not_a_seed_sweep(tmp_path):
    for config in ("experiments/configs/golf.py", "experiments/configs/grpo.py",
                   "experiments/configs/vespo.py"):
        variant = "vespo" if "vespo" in config else "arith"
        plan = jobs.make_plan(jobs.LaunchOptions(config=f"{config}:{variant},seed=5",
                                                 workdir_root=str(tmp_path)))
        [unit] = plan.work_units
        assert unit.overrides == {} and not any(a.startswith("--config.seed") for a in unit.argv)
        plan = jobs.make_plan(jobs.LaunchOptions(config=f"{config}:{variant}",
                                                 workdir_root=str(tmp_path)))
        assert [u.overrides["seed"] for u in plan.work_units] == [0, 1, 2]
