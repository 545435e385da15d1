"""Reproduces the committed base policy of the `reverse` regime from a seed.

    python tools/make_base_policy.py --seed 0 [--workdir workdirs/reverse_base] \
        [--out golfjax/data/base_policies/reverse]

Runs the two supervised cold-start stages of experiments/configs/reverse.py
(`base`: from random weights, the copy of a revealed answer first, then plain
reversal of 1-5 letters; `base2`: from stage 1's export, mostly plain
reversal), each an ordinary run (no RL step; held-out accuracy on the RL
task's 200 held-out strings at its end), exports the result and the built-in
tokenizer as a Hugging Face checkpoint to `--out` (`golfjax.export`), and
measures on it what RL will start from (`measure`). The work directory is the
runs' identity: running again resumes, or just re-exports and re-measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_OUT = os.path.join("golfjax", "data", "base_policies", "reverse")


def measure(policy: str, *, num_problems: int = 200, samples: int = 4, seed: int = 0) -> dict[str, float]:
    """What RL starts from, on the `reverse` RL task's held-out strings.

    Returns the greedy accuracy on held-out easy strings (the base task's own),
    greedy and sampled (temperature 1, `samples` per string) held-out
    accuracy, pass@samples, and refinement success: each string whose greedy answer
    is wrong gets the refinement prompt GOLF would build from that answer and its
    `reveal` critique (compact template), and `samples` refinements are sampled
    at temperature 1 and scored against the string.
    """
    import jax
    import numpy as np

    from experiments.configs import reverse as reverse_config
    from golfjax import sharding
    from golfjax.feedback.critics import AnswerCritic
    from golfjax.feedback.refinement import TEMPLATES, Attempt, build_refinement_prompt
    from golfjax.loops import rl as rl_lib
    from golfjax.models import hf
    from golfjax.rewards import make_task
    from golfjax.sampling import Sampler, SamplingConfig
    from golfjax.tokenizer import load_tokenizer

    c = reverse_config.get_config("golf")
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model_config, params = hf.load(policy, mesh=mesh)
    tokenizer = load_tokenizer(policy, vocab_size=model_config.vocab_size)
    task = make_task("reverse", **c.task.kwargs.to_dict())
    problems = list(task.load("test"))[:num_problems]
    base = SamplingConfig(max_new_tokens=c.sampling.max_new_tokens, stop_ids=tokenizer.stop_ids,
                          prompt_buckets=tuple(c.sampling.prompt_buckets), pad_id=tokenizer.pad_id)
    greedy = Sampler(model_config, base.replace(temperature=0.0, group_size=1), mesh)
    sampled = Sampler(model_config, base.replace(temperature=1.0, group_size=samples), mesh)
    key = jax.random.PRNGKey(seed)
    prompts = [tokenizer.encode_prompt(p.question, {}) for p in problems]
    g = rl_lib.sample_groups(greedy, params, problems, prompts, key, task, tokenizer)
    s = rl_lib.sample_groups(sampled, params, problems, prompts, jax.random.fold_in(key, 1), task, tokenizer)
    wrong = [i for i, r in enumerate(g.reward_N) if r < 1.0]
    out = {
        "greedy_accuracy": float(g.reward_N.mean()),
        "sampled_accuracy": float(s.reward_N.mean()),
        f"pass@{samples}": float((s.reward_BxG() >= 1.0).any(axis=1).mean()),
    }
    if wrong:
        critic = AnswerCritic("reveal")
        wrong_problems = [problems[i] for i in wrong]
        critiques = critic.critique(wrong_problems, [g.texts[i] for i in wrong], [0.0] * len(wrong))
        refine_prompts = [
            build_refinement_prompt(p, [Attempt(g.texts[i], 0.0, crit)], tokenizer,
                                    max_prompt_tokens=c.golf.max_refinement_prompt_tokens,
                                    template=TEMPLATES[c.golf.template]).tokens
            for i, p, crit in zip(wrong, wrong_problems, critiques)]
        r = rl_lib.sample_groups(sampled, params, wrong_problems, refine_prompts,
                                 jax.random.fold_in(key, 2), task, tokenizer)
        out["refinement_success"] = float(r.reward_N.mean())
    easy_task = make_task("reverse", **{**c.task.kwargs.to_dict(), **reverse_config.reverse.BASE_PLAIN, "num_test": num_problems})
    easy = list(easy_task.load("test"))[:num_problems]
    e = rl_lib.sample_groups(greedy, params, easy, [tokenizer.encode_prompt(p.question, {}) for p in easy],
                             jax.random.fold_in(key, 3), easy_task, tokenizer)
    out["easy_greedy_accuracy"] = float(e.reward_N.mean())
    out["examples"] = [f"{p.question} -> {t}" for p, t in zip(problems[:8], g.texts[:8])]
    return out


def make(workdir: str, out: str, seed: int) -> dict[str, float]:
    """Runs both cold-start stages in `workdir` and exports the policy to `out`."""
    from experiments.configs import reverse as reverse_config
    from golfjax import export as export_lib
    from golfjax import train_loop

    source, stages = "", {}
    for stage in (1, 2):
        config = stage_config(stage, seed, source)
        stage_dir = os.path.join(workdir, f"stage{stage}")
        started = time.monotonic()
        last = train_loop.train(config, stage_dir)
        print(f"cold start stage {stage}: {config.cold_start.steps} steps in"
              f" {time.monotonic() - started:.0f} s; held-out accuracy"
              f" {last.get('eval/accuracy', float('nan')):.3f}", flush=True)
        target = out if stage == 2 else os.path.join(workdir, "stage1_policy")
        os.makedirs(target, exist_ok=True)
        export_lib.export(stage_dir, target)
        if source:  # Stage 2 read the tokenizer from stage 1's export: ship it too.
            for name in os.listdir(source):
                if name.startswith("tokenizer") or name == "generation_config.json":
                    shutil.copy(os.path.join(source, name), os.path.join(target, name))
        source = target
        stages[f"stage{stage}"] = config.to_dict()
    write_provenance(out, seed, stages)
    return stages


def stage_config(stage: int, seed: int, source: str) -> Any:
    """The config of cold-start `stage` (1 or 2); stage 2 starts from `source`,
    stage 1's export."""
    from experiments.configs import reverse as reverse_config

    config = reverse_config.get_config(f"{'base' if stage == 1 else 'base2'},seed={seed}")
    if stage == 2:
        config.model.hf_path = source
        config.task.tokenizer = source
    return config


def write_provenance(out: str, seed: int, stages: dict[str, Any]) -> None:
    """How the checkpoint in `out` was made (both stages' configs), beside the weights."""
    with open(os.path.join(out, "golfjax_base_config.json"), "w") as f:
        json.dump({"seed": seed, "script": "tools/make_base_policy.py", **stages}, f,
                  indent=1, sort_keys=True, default=str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join("workdirs", "reverse_base"))
    parser.add_argument("--out", default=DEFAULT_OUT, help="the HF checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure_only", action="store_true", help="only measure the policy at --out")
    args = parser.parse_args(argv)
    if not args.measure_only:
        make(args.workdir, args.out, args.seed)
    print(json.dumps(measure(args.out, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
