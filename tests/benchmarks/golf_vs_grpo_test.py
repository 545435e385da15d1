"""benchmarks/golf_vs_grpo.py: its configs, crossings, censoring, means, ratios and bootstrap."""

import argparse
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from experiments.configs import reverse
from golfjax import config as config_lib

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "golf_vs_grpo.py"
_spec = importlib.util.spec_from_file_location("golf_vs_grpo", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _records(accuracies, samples_per_step, prompts_per_step=8):
    # Step 0 is the evaluation before RL; it has no counters yet.
    records = [{"step": 0, "eval/accuracy": accuracies[0]}]
    for i, acc in enumerate(accuracies[1:], start=1):
        records.append({"step": i, "eval/accuracy": acc, "samples/generated_total": i * samples_per_step,
                        "samples/prompts_seen": i * prompts_per_step})
    return records


def _run(records, target):
    return {"curve": bench.curve(records), "crossing": bench.crossing(records, target)}


def test_configs_are_reverse_from_the_base_policy_with_the_benchmarks_schedule():
    args = argparse.Namespace(rl_steps=40, eval_every=5, eval_problems=None, quick=False)
    golf, grpo = bench.config("golf", 2, args), bench.config("grpo", 2, args)
    assert golf.golf.enabled and not grpo.golf.enabled
    for c in (golf, grpo):
        config_lib.build(config_lib.RunConfig, c)  # A valid run config.
        assert c.seed == 2 and c.model.hf_path == reverse.BASE_POLICY
        assert (c.train.steps, c.eval.every, c.eval.num_problems) == (40, 5, 200)
    # Apart from the feedback loop the two methods run the same experiment.
    golf_dict, grpo_dict = golf.to_dict(), grpo.to_dict()
    golf_dict["golf"].pop("enabled"), grpo_dict["golf"].pop("enabled")
    assert golf_dict == grpo_dict


def test_crossing_is_the_first_evaluation_at_or_above_the_target():
    records = _records([0.1, 0.2, 0.3, 0.25, 0.5], samples_per_step=128)
    assert bench.crossing(records, 0.3) == {"step": 2.0, "accuracy": 0.3, "prompts": 16.0, "samples": 256.0}
    assert bench.crossing(records, 0.05) == {"step": 0.0, "accuracy": 0.1, "prompts": 0.0, "samples": 0.0}
    assert bench.crossing(records, 0.6) is None


def test_summary_ratios_are_grpo_over_golf_with_a_bootstrap_interval():
    # GOLF reaches 0.5 after 1 or 2 steps (128 samples a step); GRPO after 4 (64 a step).
    golf = [_run(_records([0.0, 0.5], 128), 0.5), _run(_records([0.0, 0.4, 0.5], 128), 0.5)]
    grpo = [_run(_records([0.0, 0.1, 0.2, 0.3, 0.5], 64), 0.5)] * 3
    summary = bench.summarise({"golf": golf, "grpo": grpo}, draws=2000)
    assert summary["golf"]["samples_per_seed"] == [128.0, 256.0]
    assert summary["golf"]["samples_mean"] == 192 and summary["grpo"]["samples_mean"] == 256
    samples = summary["ratio_grpo_over_golf"]["samples"]
    assert samples["kind"] == "estimate" and samples["draws"] == 2000
    assert samples["ratio"] == pytest.approx(256 / 192)
    # Resampling GOLF's two seeds gives GOLF means of 128, 192 or 256 only:
    # GRPO's 256 over them spans [1, 2], and both ends are drawn 1/4 of the time.
    assert samples["ci95"] == [pytest.approx(1.0), pytest.approx(2.0)]
    prompts = summary["ratio_grpo_over_golf"]["prompts"]
    assert prompts["ratio"] == pytest.approx(32 / 12)
    assert "every seed reached" in summary["note"]


def test_bootstrap_matches_a_direct_resampling():
    grpo, golf = np.array([300.0, 500.0, 400.0]), np.array([200.0, 250.0, 150.0])
    got = bench.bootstrap_ratio(grpo, golf, draws=500, seed=7)
    rng = np.random.default_rng(7)
    ratios = []
    grpo_idx = rng.integers(0, 3, size=(500, 3))
    golf_idx = rng.integers(0, 3, size=(500, 3))
    for i in range(500):
        ratios.append(grpo[grpo_idx[i]].mean() / golf[golf_idx[i]].mean())
    assert got["ratio"] == pytest.approx(2.0)
    assert got["ci95"] == pytest.approx(np.percentile(ratios, [2.5, 97.5]).tolist())
    assert got["ci95"][0] < 2.0 < got["ci95"][1]


def test_a_grpo_seed_that_misses_counts_at_its_budget_and_makes_a_lower_bound():
    # GOLF reaches 0.5 at 128 samples; one GRPO seed at 256, one never within 384.
    runs = {
        "golf": [_run(_records([0.0, 0.5], 128), 0.5)] * 2,
        "grpo": [_run(_records([0.0, 0.1, 0.2, 0.3, 0.5], 64), 0.5),
                 _run(_records([0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3], 64), 0.5)],
    }
    summary = bench.summarise(runs, draws=100)
    assert summary["grpo"]["seeds_reached"] == 1
    assert summary["grpo"]["samples_per_seed"] == [256.0, 384.0]
    samples = summary["ratio_grpo_over_golf"]["samples"]
    assert samples["kind"] == "lower_bound" and samples["ratio"] == pytest.approx(2.5)
    assert "from below" in summary["note"]


def test_misses_of_golf_make_an_upper_bound_and_of_both_no_ratio():
    reach, miss = _run(_records([0.0, 0.5], 128), 0.5), _run(_records([0.0, 0.1, 0.2], 128), 0.5)
    summary = bench.summarise({"golf": [reach, miss], "grpo": [reach, reach]}, draws=100)
    assert summary["ratio_grpo_over_golf"]["samples"]["kind"] == "upper_bound"
    summary = bench.summarise({"golf": [reach, miss], "grpo": [miss, reach]}, draws=100)
    assert summary["ratio_grpo_over_golf"]["samples"] == {
        "kind": "undetermined", "ratio": None, "ci95": [None, None], "draws": 100, "draws_without_ratio": 0}
    with pytest.raises(ValueError, match="'grpo'"):
        bench.summarise({"golf": [reach], "grpo": []})


def test_bad_flags_are_refused_before_any_run(tmp_path):
    for flags in (["--seeds", "0"], ["--target", "1.5"], ["--draws", "0"]):
        with pytest.raises(SystemExit):
            bench.main(flags + ["--root", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quick_runs_both_methods_and_writes_the_json_and_plot(tmp_path):
    out = tmp_path / "result.json"
    assert bench.main(["--quick", "--root", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [len(result["runs"][m]) for m in bench.METHODS] == [2, 2]
    for method in bench.METHODS:
        assert result["runs"][method][0]["curve"]["step"] == [0.0, 1.0, 2.0]
    assert result["summary"]["ratio_grpo_over_golf"]["samples"]["draws"] == 10_000
    assert (tmp_path / "result.png").stat().st_size > 0
