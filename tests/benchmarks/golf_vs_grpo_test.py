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


@pytest.mark.parametrize("regime", sorted(bench.REGIMES))
def test_configs_are_the_regimes_from_their_base_policy_with_the_benchmarks_schedule(regime):
    args = argparse.Namespace(regime=regime, rl_steps=40, eval_every=5, eval_problems=None, quick=False)
    configs = {m: bench.config(m, 2, args) for m in bench.REGIMES[regime]["methods"]}
    policy = reverse.SPARSE_POLICY if regime == "sparse" else reverse.BASE_POLICY
    assert configs["golf"].golf.enabled and not configs["grpo"].golf.enabled
    for c in configs.values():
        config_lib.build(config_lib.RunConfig, c)  # A valid run config.
        assert c.seed == 2 and c.model.hf_path == policy
        assert c.eval.num_problems == 200
    # The same budget of samples for every method, evaluated at the same samples.
    per_step = {m: c.train.prompts_per_step * c.sampling.group_size * (2 if c.golf.enabled else 1)
                for m, c in configs.items()}
    budgets = {m: c.train.steps * per_step[m] for m, c in configs.items()}
    assert configs["golf"].train.steps == 40
    if regime == "sparse":
        assert len(set(budgets.values())) == 1, budgets
        assert len({c.eval.every * per_step[m] for m, c in configs.items()}) == 1
    else:  # Issue 19's schedule: the same steps.
        assert {c.train.steps for c in configs.values()} == {40}
    # Apart from the feedback loop (and GRPO-16's group size, GOLF's samples
    # per prompt) the methods run the same experiment.
    dicts = {m: c.to_dict() for m, c in configs.items()}
    for d in dicts.values():
        d["golf"].pop("enabled")
        d["train"].pop("steps"), d["checkpoint"].pop("every"), d["eval"].pop("every")
    if "grpo_g16" in dicts:
        assert dicts["grpo_g16"]["sampling"].pop("group_size") == 2 * dicts["grpo"]["sampling"].pop("group_size")
        dicts["golf"]["sampling"].pop("group_size")
        assert dicts["grpo_g16"] == dicts["grpo"]
    assert dicts["golf"] == dicts["grpo"]


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


def test_each_baseline_gets_its_ratio_over_golf():
    golf = [_run(_records([0.0, 0.5], 384), 0.5)] * 2
    grpo = [_run(_records([0.0, 0.1, 0.5], 192), 0.5)] * 2
    grpo_g16 = [_run(_records([0.0, 0.1, 0.2, 0.5], 384), 0.5)] * 2
    summary = bench.summarise({"golf": golf, "grpo": grpo, "grpo_g16": grpo_g16}, draws=100)
    assert summary["ratio_grpo_over_golf"]["samples"]["ratio"] == pytest.approx(1.0)
    assert summary["ratio_grpo_g16_over_golf"]["samples"]["ratio"] == pytest.approx(3.0)
    assert summary["ratio_grpo_g16_over_golf"]["prompts"]["ratio"] == pytest.approx(3.0)
    assert summary["note_grpo_g16"] == summary["note"]


def test_samples_are_the_runs_total_in_records_of_either_format():
    new = {"step": 2, "eval/accuracy": 0.5, "samples/generated": 8.0, "samples/generated_total": 16.0}
    old = {"step": 2, "eval/accuracy": 0.5, "samples/generated": 16.0}  # Before the total had its own key.
    assert bench.crossing([new], 0.5)["samples"] == bench.crossing([old], 0.5)["samples"] == 16.0
    assert bench.curve([{"step": 0, "eval/accuracy": 0.0}, new])["samples"] == [0.0, 16.0]


def test_a_chunked_run_stops_after_the_chunk_that_reaches_the_target(monkeypatch):
    trained = []

    def train(c, workdir):
        trained.append(c.train.steps)

    accuracy = {10: 0.1, 20: 0.2, 30: 0.35, 40: 0.5, 50: 0.5, 60: 0.6, 70: 0.6, 80: 0.7}
    monkeypatch.setattr("golfjax.train_loop.train", train)
    monkeypatch.setattr("golfjax.metrics.read_metrics", lambda workdir: [
        {"step": s, "eval/accuracy": a} for s, a in accuracy.items() if s <= trained[-1]])
    args = argparse.Namespace(chunk=10, eval_every=5, target=0.3)
    def grpo():
        return bench.config("grpo", 0, argparse.Namespace(regime="sparse", rl_steps=40, eval_every=5,
                                                         eval_problems=None, quick=False))

    assert (grpo().train.steps, grpo().eval.every) == (80, 10)  # GRPO: twice GOLF's steps.
    bench.train_run(grpo(), "unused", args)
    assert trained == [20, 40]
    trained.clear()
    args.target = 0.9  # Never reached: the whole budget.
    records = bench.train_run(grpo(), "unused", args)
    assert trained == [20, 40, 60, 80] and records[-1]["step"] == 80
    trained[:] = [40]  # A run on disk cut short at step 40.
    args.no_train = True
    records = bench.train_run(grpo(), "unused", args)
    assert trained == [40] and records[-1]["step"] == 40  # Read back as it stands; nothing trained.


def test_golf_overrides_set_a_knob_of_the_golf_runs_only():
    args = argparse.Namespace(regime="sparse", rl_steps=40, eval_every=5, eval_problems=None, quick=False,
                              golf_set=[bench.parse_override("golf.train_refinements=False"),
                                        bench.parse_override("loss.shaping_gamma=0.5")])
    golf, grpo = bench.config("golf", 0, args), bench.config("grpo", 0, args)
    assert golf.golf.train_refinements is False and golf.loss.shaping_gamma == 0.5
    assert grpo.golf.train_refinements is True
    assert bench.run_name("golf", args.golf_set) == "golf-train_refinements=False-shaping_gamma=0.5"
    assert bench.run_name("grpo", args.golf_set) == "grpo"
    with pytest.raises(ValueError, match="golf.nope=1"):
        bench.parse_override("golf.nope=1")


def test_replay_summary_compares_golf_and_its_replay_at_the_same_steps():
    golf = [{**_run(_records([0.0, 0.1, 0.2], 384), 0.3), "seed": 0}]
    replay = [{**_run(_records([0.0, 0.4], 0), 0.3), "seed": 0}]
    out = bench.replay_summary(golf, replay)
    assert out["per_seed"][0]["step"] == [0.0, 1.0]
    assert out["per_seed"][0]["golf_accuracy"] == [0.0, 0.1]
    assert out["per_seed"][0]["replay_accuracy"] == [0.0, 0.4]
    assert out["replay_seeds_reached"] == 1 and out["per_seed"][0]["golf_crossing"] is None


def test_bad_flags_are_refused_before_any_run(tmp_path):
    for flags in (["--seeds", "0"], ["--target", "1.5"], ["--draws", "0"], ["--methods", "ppo"],
                  ["--methods", "grpo", "--replay", "shaping"], ["--regime", "reverse", "--methods", "grpo_g16"],
                  ["--golf_set", "golf.n_inject"]):
        with pytest.raises(SystemExit):
            bench.main(flags + ["--root", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quick_runs_every_method_and_the_replay_and_writes_the_json_and_plot(tmp_path):
    out = tmp_path / "result.json"
    assert bench.main(["--quick", "--seeds", "1", "--replay", "shaping", "--root", str(tmp_path / "runs"),
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [len(result["runs"][m]) for m in bench.METHODS] == [1, 1, 1]
    curves = {m: result["runs"][m][0]["curve"] for m in bench.METHODS}
    # GRPO, with half of GOLF's samples a step, runs twice the steps.
    assert [curves[m]["step"] for m in bench.METHODS] == [[0.0, 1.0, 2.0], [0.0, 2.0, 4.0], [0.0, 1.0, 2.0]]
    # Every method is evaluated at the same samples generated (GOLF's refinements counted).
    assert curves["grpo"]["samples"] == curves["grpo_g16"]["samples"] == curves["golf"]["samples"]
    assert curves["golf"]["samples"][-1] > 0
    assert result["summary"]["ratio_grpo_g16_over_golf"]["samples"]["draws"] == 10_000
    assert result["replays"][0]["curve"]["step"] == [0.0, 1.0, 2.0]
    assert len(result["replay_summary"]["per_seed"]) == 1
    assert (tmp_path / "result.png").stat().st_size > 0
