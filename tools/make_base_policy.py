"""Reproduces the committed base policies of the `reverse` regimes from a seed.

    python tools/make_base_policy.py --seed 0 [--workdir workdirs/reverse_base] \
        [--out golfjax/data/base_policies/reverse]
    python tools/make_base_policy.py --regime sparse --seed 0   # golfjax/data/base_policies/reverse6

Runs the two supervised cold-start stages of experiments/configs/reverse.py
(`base`: from random weights, the copy of a revealed answer first, then plain
reversal of 1-5 letters; `base2`: from stage 1's export, mostly plain
reversal), each an ordinary run (no RL step; held-out accuracy on the RL
task's 200 held-out strings at its end), exports the result and the built-in
tokenizer as a Hugging Face checkpoint to `--out` (`golfjax.export`), and
measures on it what RL will start from (`measure`). `--regime sparse` runs a
third stage (`sparse_base`: 30 steps on plain 6-letter strings) from the
committed 5-letter policy, for the sparse-reward regime. The work directory
is the runs' identity: running again resumes, or just re-exports and re-measures.
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


def measure(policy: str, *, num_problems: int = 200, samples: int = 4, seed: int = 0,
            variant: str = "golf") -> dict[str, Any]:
    """`measure_params` of the checkpoint at `policy`."""
    import jax

    from golfjax import sharding
    from golfjax.models import hf
    from golfjax.tokenizer import load_tokenizer

    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model_config, params = hf.load(policy, mesh=mesh)
    tokenizer = load_tokenizer(policy, vocab_size=model_config.vocab_size)
    return measure_params(params, model_config, tokenizer, mesh, num_problems=num_problems,
                          samples=samples, seed=seed, variant=variant)


def measure_params(params: Any, model_config: Any, tokenizer: Any, mesh: Any, *, num_problems: int = 200,
                   samples: int = 4, seed: int = 0, variant: str = "golf") -> dict[str, Any]:
    """What RL starts from, on the held-out strings of `variant`'s RL task.

    Returns the greedy accuracy on held-out easy strings (the base task's own),
    greedy and sampled (temperature 1, `samples` per string) held-out
    accuracy, pass@samples, and refinement success: each string whose greedy answer
    is wrong gets the refinement prompt GOLF would build from that answer and its
    `reveal` critique (compact template), and `samples` refinements are sampled
    at temperature 1 and scored against the string.
    """
    import jax

    from experiments.configs import reverse as reverse_config
    from golfjax.feedback.critics import AnswerCritic
    from golfjax.feedback.refinement import TEMPLATES, Attempt, build_refinement_prompt
    from golfjax.loops import rl as rl_lib
    from golfjax.rewards import make_task
    from golfjax.sampling import Sampler, SamplingConfig

    c = reverse_config.get_config(variant)
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
    success_BxG = s.reward_BxG() >= 1.0
    out = {
        "greedy_accuracy": float(g.reward_N.mean()),
        "sampled_accuracy": float(s.reward_N.mean()),
        f"pass@{samples}": float(success_BxG.any(axis=1).mean()),
        # What a GRPO group of this many samples sees at RL's start.
        f"all_fail_groups_of_{samples}": float((~success_BxG.any(axis=1)).mean()),
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


# Each regime's cold-start stages, the directory they export to and the config
# variant its measurement reads the RL task from.
REGIMES = {
    "reverse": {"stages": (1, 2), "out": DEFAULT_OUT, "variant": "golf"},
    "sparse": {"stages": (3,), "out": os.path.join("golfjax", "data", "base_policies", "reverse6"),
               "variant": "sparse_golf"},
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(workdir: str, out: str, seed: int, regime: str = "reverse") -> dict[str, Any]:
    """Runs the regime's cold-start stages in `workdir` and exports the policy to `out`."""
    from experiments.configs import reverse as reverse_config
    from golfjax import export as export_lib
    from golfjax import train_loop

    stage_numbers = REGIMES[regime]["stages"]
    # Stage 3 starts from the committed base policy of the 5-letter regime.
    source, stages = reverse_config.BASE_POLICY if stage_numbers[0] == 3 else "", {}
    for stage in stage_numbers:
        config = stage_config(stage, seed, source)
        stage_dir = os.path.join(workdir, f"stage{stage}")
        started = time.monotonic()
        last = train_loop.train(config, stage_dir)
        print(f"cold start stage {stage}: {config.cold_start.steps} steps in"
              f" {time.monotonic() - started:.0f} s; held-out accuracy"
              f" {last.get('eval/accuracy', float('nan')):.3f}", flush=True)
        target = out if stage == stage_numbers[-1] else os.path.join(workdir, f"stage{stage}_policy")
        os.makedirs(target, exist_ok=True)
        export_lib.export(stage_dir, target)
        if source:  # A later stage read the tokenizer from its source: ship it too.
            for name in os.listdir(source):
                if name.startswith("tokenizer") or name == "generation_config.json":
                    shutil.copy(os.path.join(source, name), os.path.join(target, name))
        source = target
        stages[f"stage{stage}"] = config.to_dict()
    write_provenance(out, seed, stages)
    return stages


def stage_config(stage: int, seed: int, source: str) -> Any:
    """The config of cold-start `stage`: 1 and 2 make the 5-letter regime's
    policy (stage 2 starts from `source`, stage 1's export), 3 the sparse
    regime's from the committed 5-letter one (`source`)."""
    from experiments.configs import reverse as reverse_config

    variant = {1: "base", 2: "base2", 3: "sparse_base"}[stage]
    config = reverse_config.get_config(f"{variant},seed={seed}")
    if stage > 1:
        config.model.hf_path = source
        config.task.tokenizer = source
    return config


def write_provenance(out: str, seed: int, stages: dict[str, Any]) -> None:
    """How the checkpoint in `out` was made (every stage's config), beside the
    weights; paths inside this checkout are written relative to its root."""

    def relative(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, str) and os.path.isabs(value) and value.startswith(ROOT + os.sep):
            return os.path.relpath(value, ROOT)
        return value

    with open(os.path.join(out, "golfjax_base_config.json"), "w") as f:
        json.dump({"seed": seed, "script": "tools/make_base_policy.py", **relative(stages)}, f,
                  indent=1, sort_keys=True, default=str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="reverse", choices=sorted(REGIMES),
                        help="reverse: the 5-letter regime's policy (stages 1-2, from random weights);"
                             " sparse: the 6-letter regime's (stage 3, from the committed reverse policy)")
    parser.add_argument("--workdir", default=None, help="default workdirs/<regime>_base")
    parser.add_argument("--out", default=None, help="the HF checkpoint directory to write (default: the regime's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure_only", action="store_true", help="only measure the policy at --out")
    parser.add_argument("--samples", type=int, default=4,
                        help="samples per held-out string at temperature 1 (and refinements per wrong one)")
    args = parser.parse_args(argv)
    regime = REGIMES[args.regime]
    out = args.out or regime["out"]
    if not args.measure_only:
        make(args.workdir or os.path.join("workdirs", f"{args.regime}_base"), out, args.seed, args.regime)
    print(json.dumps(measure(out, seed=args.seed, samples=args.samples, variant=regime["variant"]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
