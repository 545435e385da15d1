"""Shared pieces of the experiment configs.

Defaults live in the dataclasses of golfjax/config.py; a config only states
what differs. `base()` returns the full tree of sections with no overrides, so
that `--config.section.key=value` works for every key.
"""

from __future__ import annotations


import ml_collections

from golfjax import config as config_lib
from golfjax.rewards import arith


def base() -> ml_collections.ConfigDict:
    """Every key of `RunConfig`, at its default."""
    return ml_collections.ConfigDict(config_lib.to_dict(config_lib.RunConfig()))


def parse_variant(arg: str | None, known: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """`"arith,seed=3"` -> `("arith", {"seed": "3"})`; the first item is the variant."""
    parts = [p for p in (arg or known[0]).split(",") if p]
    variant, options = parts[0], dict(p.split("=", 1) for p in parts[1:])
    if variant not in known:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(known)}")
    return variant, options


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to about a minute on CPU: tiny model, few steps, small groups."""
    config.model.preset = "tiny"
    config.cold_start.steps = min(config.cold_start.steps, 2)
    config.cold_start.refine_first_steps = min(config.cold_start.refine_first_steps, 1)
    config.cold_start.batch_size = 8
    config.train.steps = 2
    config.train.prompts_per_step = 4
    config.sampling.group_size = 4
    config.eval.every = 2
    config.eval.num_problems = 8
    config.eval.samples = 2
    config.checkpoint.every = 1
    return config




TASK_VARIANTS = ("arith", "constraints", "math", "smoke")


def task_config(variant: str) -> ml_collections.ConfigDict:
    """The GOLF/GRPO setup of one built-in task (feedback off; golf.py turns it on).

    `arith` (golfjax/rewards/arith.py: `COLD_START`, `COLD_START_REFINE`,
    `RL`): a cold start that teaches the answer format on the 1-digit sums that
    do not carry and, in refinement-format batches over longer carry-free sums,
    the copy of a revealed answer (all of the first 300 steps, a coin flip per
    step after: README, GOLF vs GRPO); then RL on the 1-digit sums that carry,
    which the cold-started model gets wrong: sparse reward, GOLF's regime. The
    tiny character-level model (`task_1m`) needs far larger learning rates
    than GOLF's 1e-6 for 7B models.
    """
    c = base()
    c.model.preset = "task_1m"
    c.sampling.group_size = 8
    c.sampling.max_new_tokens = 24
    c.sampling.prompt_buckets = (32, 64, 128, 256)
    c.train.prompts_per_step = 8
    c.train.loss = "ppo_clip"
    c.train.advantage = "drgrpo"  # GOLF: Dr.GRPO advantages (no std division).
    c.loss.eps_high = 0.28
    c.loss.dual_clip = 10.0
    c.loss.agg = "seq-mean-token-sum-norm"
    c.optimizer.lr = 1e-4
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip = 1.0
    c.golf.template = "compact"
    c.golf.max_refinement_prompt_tokens = 128
    c.eval.every = 10
    c.eval.num_problems = 64
    c.eval.samples = 4
    c.checkpoint.every = 10
    if variant in ("arith", "smoke"):
        c.task.name = "arith"
        c.task.kwargs = arith.RL
        c.cold_start.steps = 450
        c.cold_start.batch_size = 32
        c.cold_start.lr = 1e-3
        c.cold_start.task_kwargs = arith.COLD_START
        c.cold_start.refine_task_kwargs = arith.COLD_START_REFINE
        c.cold_start.refine_first_steps = 300
        c.cold_start.refine_fraction = 0.5
        # Every refinement prompt of this task, the cold start's and GOLF's,
        # is 90-109 tokens (one attempt: a second never fits the 128-token
        # budget); padding them to 112 rather than 128 makes each cold-start
        # step about 11% shorter, and most of the demo is those steps.
        c.sampling.prompt_buckets = (32, 64, 112, 128, 256)
        # RL from that cold start: 3e-4 leaves GOLF's policy at 0% after 20
        # steps, 3e-3 collapses it (README, GOLF vs GRPO).
        c.optimizer.lr = 1e-3
        c.sampling.max_new_tokens = 20
        c.train.steps = 30
        c.eval.samples = 16
        c.eval.every = 5
        # A save cost about half a second of a 2-core CPU's time (the state and
        # Adam's moments, written while the next steps run), so saving every 10
        # steps cost the demo about 25 s. A crash now recomputes at most 50
        # steps; a preemption (SIGTERM) still saves the step it stops at.
        c.checkpoint.every = 50
    elif variant == "constraints":
        c.task.name = "constraints"
        c.cold_start.steps = 300
        c.cold_start.batch_size = 32
        c.cold_start.lr = 3e-3
        c.cold_start.refine_fraction = 0.3
        c.train.steps = 40
        c.sampling.max_new_tokens = 16
    elif variant == "math":
        # Real models: point model.hf_path and task.tokenizer at a local
        # checkpoint (e.g. Qwen2.5-Math-1.5B) and task.kwargs.train_path at a
        # GSM8K/MATH JSONL file; these defaults run the shipped sample on the
        # tiny random model only to exercise the pipeline.
        c.task.name = "math"
        c.model.preset = "tiny"
        c.sampling.max_new_tokens = 64
        c.golf.template = "default"
        c.golf.max_refinement_prompt_tokens = 1024
        c.sampling.prompt_buckets = (64, 128, 256, 512, 1024)
        c.train.steps = 20
        c.eval.num_problems = 8
    if variant == "smoke":
        smoke(c)
    return c


def feedback_config(arg: str | None, *, golf: bool) -> ml_collections.ConfigDict:
    """`task_config` of the variant in `arg` (`"arith,seed=1"`), GOLF on or off."""
    variant, options = parse_variant(arg, TASK_VARIANTS)
    c = task_config(variant)
    c.golf.enabled = golf
    if "seed" in options:
        c.seed = int(options["seed"])
    return c


def seed_sweep(arg: str | None, known: tuple[str, ...]) -> list[dict[str, object]]:
    """Three seeds, as the GOLF vs GRPO benchmark runs them; the one run when
    the variant in `arg` (one of `known`, see `parse_variant`) names its own
    `seed=` (a sweep over seeds would override it)."""
    _, options = parse_variant(arg, known)
    if "seed" in options:
        return [{}]
    return [{"seed": seed} for seed in range(3)]
