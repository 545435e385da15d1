"""Tests for experiments/configs/reverse.py: every variant builds, prompts fit, the base policy ships."""

import json
import os

import pytest

from experiments.configs import reverse as reverse_config
from golfjax import config as config_lib
from golfjax import feedback
from golfjax import metrics as metrics_lib
from golfjax import train_loop
from golfjax.data import sft_examples
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback import refinement
from golfjax.rewards import reverse


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("variant", reverse_config.VARIANTS + ("golf,seed=2",))
def test_every_variant_builds(variant):
    cfg = config_lib.build(config_lib.RunConfig, reverse_config.get_config(variant))
    assert cfg.task.name == "reverse" and cfg.model.preset == "task_1m"
    if variant.startswith("base"):
        assert cfg.cold_start.steps > 0 and cfg.train.steps == 0 and not cfg.model.hf_path
    elif variant == "sparse_base":  # From the committed 5-letter policy.
        assert cfg.cold_start.steps > 0 and cfg.train.steps == 0 and cfg.model.hf_path == reverse_config.BASE_POLICY
    elif variant.startswith("sparse_"):
        assert cfg.cold_start.steps == 0 and cfg.model.hf_path == reverse_config.SPARSE_POLICY
        assert cfg.task.kwargs == reverse.SPARSE and cfg.train.prompts_per_step == 24
    else:
        assert cfg.cold_start.steps == 0 and cfg.model.hf_path == reverse_config.BASE_POLICY
    assert cfg.seed == (2 if variant.endswith("seed=2") else 0)


@pytest.mark.parametrize("prefix", ["", "sparse_"])
def test_golf_and_grpo_differ_only_in_the_feedback_loop(prefix):
    def run(variant):
        return config_lib.to_dict(config_lib.build(config_lib.RunConfig, reverse_config.get_config(prefix + variant)))

    golf, grpo = run("golf"), run("grpo")
    assert golf.pop("golf")["enabled"] and not grpo.pop("golf")["enabled"]
    assert golf == grpo
    if prefix:  # GRPO with groups of 16: also GOLF's samples per prompt and step.
        grpo_g16 = run("grpo_g16")
        grpo_g16.pop("golf")
        assert grpo_g16["sampling"].pop("group_size") == 2 * grpo["sampling"].pop("group_size")
        assert grpo_g16 == grpo


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'gold'"):
        reverse_config.get_config("gold")


@pytest.mark.parametrize("variant", ["golf", "sparse_golf"])
def test_refinement_prompts_fit_with_their_attempt(tok, variant):
    """Every refinement prompt a regime builds (GOLF's from the longest failed
    response the sampler can return, and the cold start's) keeps one attempt
    within the 112-token budget, the largest prompt bucket."""
    c = reverse_config.get_config(variant)
    budget = c.golf.max_refinement_prompt_tokens
    assert budget == max(c.sampling.prompt_buckets)
    template = refinement.TEMPLATES[c.golf.template]
    task = reverse.ReverseTask(**c.task.kwargs)
    problems = list(task.load("train")[:500]) + list(task.load("test"))
    critic = feedback.make_critic(None, task)
    g = c.sampling.group_size
    responses = ["z" * c.sampling.max_new_tokens] * (len(problems) * g)
    rows = [p for p in problems for _ in range(g)]
    prompts = refinement.build_refinement_prompts(
        problems, responses, [0.0] * len(rows), critic.critique(rows, responses, [0.0] * len(rows)), tok,
        group_size=g, max_prompt_tokens=budget, template=template, on_overflow="flag")
    assert all(p.num_attempts == 1 and len(p.tokens) <= budget for p in prompts)

    base = reverse_config.get_config({"golf": "base", "sparse_golf": "sparse_base"}[variant])
    refine_task = reverse.ReverseTask(**{**base.task.kwargs, **base.cold_start.task_kwargs,
                                         **base.cold_start.refine_task_kwargs})
    examples = sft_examples.make_cold_start_examples(
        refine_task, refine_task.load("train")[:500], tok, critic=feedback.make_critic(None, refine_task),
        refine_fraction=1.0, max_prompt_tokens=budget, template=template, seed=0)
    assert all(len(e.prompt_tokens) <= budget for e in examples)
    assert all("reference answer is" in tok.decode(e.prompt_tokens) for e in examples)


def _strings(tree):
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in _strings(v)]
    return [tree] if isinstance(tree, str) else []


def test_base_policies_are_committed_and_small():
    size = 0
    for policy in (reverse_config.BASE_POLICY, reverse_config.SPARSE_POLICY):
        files = set(os.listdir(policy))
        assert {"config.json", "model.safetensors", "tokenizer.json", "golfjax_base_config.json"} <= files
        size += sum(os.path.getsize(os.path.join(policy, f)) for f in files)
        # The provenance names no absolute path (of the machine that made it).
        with open(os.path.join(policy, "golfjax_base_config.json")) as f:
            assert not [v for v in _strings(json.load(f)) if os.path.isabs(v)]
    assert size <= 10 * 2**20


@pytest.mark.slow
def test_smoke_variant_runs_from_the_base_policy_and_logs_its_injected_rows(tmp_path):
    c = reverse_config.get_config("smoke")
    c.golf.log_injected = True
    last = train_loop.train(c, str(tmp_path))
    records = metrics_lib.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "eval/accuracy" in records[0] and "eval/accuracy" in last
    assert "golf/refinement_success" in last and "grad/refinement_share" in last
    # One record of injected rows per RL step, as many as the step injected.
    injected = metrics_lib.read_metrics(str(tmp_path), "injected.jsonl")
    assert [r["step"] for r in injected] == [1, 2]
    for rows, metrics in zip(injected, records[1:]):
        assert len(rows["rows"]) == metrics["golf/injected_samples"]
        assert all(row["question"].startswith("Reverse ") and row["response"] for row in rows["rows"])


@pytest.mark.slow
def test_first_rl_steps_keep_the_refinement_skill(tmp_path):
    """The stable start of issue 19: the base policy's refinements of wrong
    5-letter answers copy the revealed answer in 68% of samples
    (tools/make_base_policy.py --measure_only); at the config's lr and warmup
    the first GOLF steps keep that within 0.15."""
    c = reverse_config.get_config("golf")
    c.train.steps = c.optimizer.warmup_steps + 1  # The shortest run whose warmup ends (golfjax/config.py).
    c.eval.num_problems = 8
    c.eval.samples = 1
    c.eval.every = c.train.steps
    train_loop.train(c, str(tmp_path))
    success = [r["golf/refinement_success"] for r in metrics_lib.read_metrics(str(tmp_path))
               if "golf/refinement_success" in r]
    assert len(success) == c.train.steps
    assert sum(success) / len(success) >= 0.68 - 0.15, success
