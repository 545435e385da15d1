"""The counting of benchmarks/golf_vs_grpo.py: crossings, means and ratios."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "golf_vs_grpo.py"
_spec = importlib.util.spec_from_file_location("golf_vs_grpo", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _records(accuracies, samples_per_step, prompts_per_step=8):
    # Step 0 is the evaluation before RL; it has no counters yet.
    records = [{"step": 0, "eval/accuracy": accuracies[0]}]
    for i, acc in enumerate(accuracies[1:], start=1):
        records.append({"step": i, "eval/accuracy": acc, "samples/generated": i * samples_per_step,
                        "samples/prompts_seen": i * prompts_per_step})
    return records


def test_crossing_is_the_first_evaluation_at_or_above_the_target():
    records = _records([0.1, 0.2, 0.3, 0.25, 0.5], samples_per_step=128)
    assert bench.crossing(records, 0.3) == {"step": 2.0, "accuracy": 0.3, "prompts": 16.0, "samples": 256.0}
    assert bench.crossing(records, 0.05) == {"step": 0.0, "accuracy": 0.1, "prompts": 0.0, "samples": 0.0}
    assert bench.crossing(records, 0.6) is None


def _run(records, target):
    return {"curve": bench.curve(records), "crossing": bench.crossing(records, target)}


def test_summary_ratios_are_grpo_over_golf():
    # GOLF reaches 0.5 after 1 step (128 samples, 8 prompts); GRPO after 4 (256, 32).
    runs = {
        "golf": [_run(_records([0.0, 0.5, 0.6], 128), 0.5)] * 2,
        "grpo": [_run(_records([0.0, 0.1, 0.2, 0.3, 0.5], 64), 0.5)] * 2,
    }
    summary = bench.summarise(runs, seeds=2)
    assert summary["golf"]["samples_mean"] == 128 and summary["grpo"]["samples_mean"] == 256
    assert summary["ratio_grpo_over_golf"] == {"prompts": 4.0, "samples": 2.0}
    assert summary["golf"]["final_accuracy_mean"] == pytest.approx(0.6)
    assert "NOT" not in summary["note"]


def test_summary_says_when_seeds_missed_the_target():
    runs = {
        "golf": [_run(_records([0.0, 0.5], 128), 0.5), _run(_records([0.0, 0.1], 128), 0.5)],
        "grpo": [_run(_records([0.0, 0.1], 64), 0.5)] * 2,
    }
    summary = bench.summarise(runs, seeds=2)
    assert summary["golf"]["seeds_reached"] == 1 and summary["grpo"]["seeds_reached"] == 0
    assert summary["ratio_grpo_over_golf"] == {"prompts": None, "samples": None}
    assert summary["note"].startswith("NOT every seed")


def test_a_grpo_that_never_reaches_the_target_bounds_the_ratio_from_below():
    # GOLF reaches 0.5 at 8 prompts / 128 samples; GRPO's budgets end at 24 and 32 prompts.
    runs = {
        "golf": [_run(_records([0.0, 0.5], 128), 0.5)] * 2,
        "grpo": [_run(_records([0.0, 0.1, 0.2], 64), 0.5), _run(_records([0.0, 0.1, 0.2, 0.3], 64), 0.5)],
    }
    summary = bench.summarise(runs, seeds=2)
    assert summary["ratio_grpo_over_golf"] == {"prompts": None, "samples": None}
    assert summary["ratio_grpo_over_golf_at_least"] == {"prompts": 2.0, "samples": 1.0}
    runs["grpo"][0] = _run(_records([0.0, 0.5], 64), 0.5)  # One GRPO seed reaches it: a ratio, no bound.
    assert "ratio_grpo_over_golf_at_least" not in bench.summarise(runs, seeds=2)
