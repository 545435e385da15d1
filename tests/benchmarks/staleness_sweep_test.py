"""benchmarks/staleness_sweep.py: the reverse regime's configs, the retention and its bootstrap."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from experiments.configs import reverse
from golfjax import config as config_lib

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "staleness_sweep.py"
_spec = importlib.util.spec_from_file_location("staleness_sweep", _PATH)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_reverse_configs_train_grpo_from_the_base_policy_with_the_swept_loss():
    c = sweep.reverse_config("vespo", 16, 2, asynchronous=False)
    run = config_lib.build(config_lib.RunConfig, c)  # A valid run config.
    assert c.model.hf_path == reverse.BASE_POLICY and not c.golf.enabled and c.seed == 2
    assert (c.train.loss, c.train.advantage, c.schedule.minibatches) == ("vespo", "grpo", 16)
    assert c.eval.num_problems == 200
    # The library's loss defaults, not reverse.py's PPO settings (eps_high 0.28).
    assert c.loss.to_dict() == config_lib.to_dict(config_lib.RunConfig())["loss"]
    assert not run.schedule.async_rollout
    a = sweep.reverse_config("ppo_clip", 16, 0, asynchronous=True)
    assert a.schedule.async_rollout and a.schedule.minibatches == 1
    assert (a.schedule.sync_every, a.schedule.staleness_threshold, a.schedule.partial_rollout) == (4, 1.0, True)
    assert not a.train.recompute_old_logp


def _run(loss, staleness, accuracies, seed=0, asynchronous=False):
    return {"loss": loss, "staleness": staleness, "seed": seed, "async": asynchronous,
            "eval_accuracy": accuracies}


def test_retention_is_the_mean_gain_over_the_mean_gain_at_staleness_1():
    runs = [
        _run("vespo", 1, [0.4, 0.8], 0), _run("vespo", 1, [0.4, 0.6], 1),  # gains 0.4, 0.2
        _run("vespo", 64, [0.4, 0.55], 0), _run("vespo", 64, [0.4, 0.55], 1),  # gains 0.15
        _run("vespo", 1, [0.4, 0.1], 0, asynchronous=True),  # Async: a row of its own (gain -0.3).
        _run("ppo_clip", 64, [0.4, 0.5]),  # No staleness 1 to compare with: no row.
    ]
    rows = sweep.retention(runs, draws=1000)
    assert len(rows) == 2
    row, async_row = rows
    assert (async_row["loss"], async_row["staleness"], async_row["seeds"]) == ("vespo", "async", [1, 2])
    assert async_row["retention"] == pytest.approx(-1.0)
    assert (row["loss"], row["staleness"], row["seeds"]) == ("vespo", 64, [2, 2])
    assert row["gain_mean"] == pytest.approx(0.15) and row["gain_mean_staleness_1"] == pytest.approx(0.3)
    assert row["retention"] == pytest.approx(0.5)
    # Staleness 1's resampled mean gain is 0.2, 0.3 or 0.4: retention 0.75, 0.5 or 0.375.
    assert row["ci95"] == [pytest.approx(0.375), pytest.approx(0.75)]
    assert row["draws"] == 1000 and row["draws_without_ratio"] == 0


def test_retention_without_a_gain_at_staleness_1_has_no_ratio():
    runs = [_run("sapo", 1, [0.4, 0.3]), _run("sapo", 4, [0.4, 0.5])]
    (row,) = sweep.retention(runs, draws=50)
    assert row["retention"] is None and row["ci95"] == [None, None] and row["draws_without_ratio"] == 50


def test_summary_reports_each_seeds_gain():
    nan = float("nan")
    runs = []
    for seed, accuracies in enumerate(([0.4, 0.6, 0.7], [0.4, 0.5, 0.5])):
        runs.append({**_run("vespo", 4, accuracies, seed), "grad_norm": [1.0, 2.0], "reward": [0.1, 0.2],
                     "log_w_abs_max": [0.0, 0.1], "ess": [1.0, 0.9], "lag_max": [nan, nan],
                     "skipped_nonfinite": 0.0, "entropy": [nan, nan]})
    (row,) = sweep.summarise(runs)
    assert row["regime"] == "staleness=4" and row["seeds"] == 2
    assert row["gain_per_seed"] == [pytest.approx(0.3), pytest.approx(0.1)]
    assert row["accuracy_mean_during"] == pytest.approx(np.mean([0.65, 0.5]))


@pytest.mark.parametrize("flags", [["--steps", "64", "--ns", "1,3"], ["--ns", ""], ["--ns", "0"], ["--ns", "1,x"],
                                   ["--seeds", "0"], ["--regime", "nope"], ["--losses", "vespo,nope"],
                                   ["--async-losses", "ppo"]])
def test_bad_flags_are_refused_before_any_run(tmp_path, flags):
    with pytest.raises(SystemExit):
        sweep.main(flags + ["--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quick_sweep_runs_and_writes_the_json_and_plot(tmp_path):
    out = tmp_path / "sweep"
    assert sweep.main(["--quick", "--workdir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    names = sorted(run["name"] for run in result["runs"])
    assert names == ["vespo_async_seed0", "vespo_n1_seed0", "vespo_n2_seed0"]
    for run in result["runs"]:
        assert run["eval_step"] == [0, 2, 4] and run["config"]["eval"]["num_problems"] == 16
    assert {(row["loss"], row["staleness"]) for row in result["retention"]} == {("vespo", 2), ("vespo", "async")}
    assert (tmp_path / "sweep.png").stat().st_size > 0
