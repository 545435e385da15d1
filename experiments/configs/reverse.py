"""GOLF and GRPO on `reverse`: string reversal, where learning generalises.

    python -m experiments.main --config=experiments/configs/reverse.py:golf --workdir=workdirs/reverse_golf
    python -m experiments.main --config=experiments/configs/reverse.py:grpo --workdir=workdirs/reverse_grpo

Variants (a comma-separated `seed=N` sets the run's seed, e.g. `golf,seed=2`):

- `golf`, `grpo`: 60 RL steps on strings of 5 letters
  (golfjax/rewards/reverse.py: `RL`), from the committed base policy
  (`BASE_POLICY`: no cold start in the run), evaluated on 200 held-out strings
  of the same length that no phase trains on (2 samples each at temperature
  1). `grpo` is `golf` with the feedback loop off, on equal terms (same base
  policy, problems, sampling, optimizer, loss); docs/results.md has their
  measured curves (the regime where GOLF has nothing to add).
- `base`, `base2`: the two supervised cold-start stages that made the base
  policy (run by tools/make_base_policy.py, which exports it): reversal of
  strings of 1-5 letters, and the copy of a revealed answer in refinement
  format on strings of 1-9 letters.
- `smoke`: two GOLF steps from the base policy on small batches, to exercise
  the pipeline.
- `sparse_golf`, `sparse_grpo`, `sparse_grpo_g16`: the sparse-reward regime
  (docs/algorithms.md#golf-sparse), where GOLF's premise holds: RL on
  6-letter strings (`reverse.SPARSE`), 24 prompts a step, from
  `SPARSE_POLICY`, which gets about 3% of them right at temperature 1, so
  that about 80% of groups of 8 fail entirely at RL's start; its refinements
  with the `reveal` critique succeed about 65% of the time, so GOLF injects
  about 17 distinct verified demonstrations a step. `sparse_grpo_g16` is GRPO
  with groups of 16: GOLF's samples per prompt (its rollout and its
  refinements). `make demo` runs the three; benchmarks/golf_vs_grpo.py
  measures them over seeds.
- `sparse_base`: the cold start that made `SPARSE_POLICY` from
  `BASE_POLICY` (run by tools/make_base_policy.py --regime sparse).
"""

from __future__ import annotations

import os

import ml_collections

import golfjax
from experiments.configs import common
from golfjax.rewards import reverse

VARIANTS = ("golf", "grpo", "base", "base2", "smoke", "sparse_golf", "sparse_grpo", "sparse_grpo_g16",
            "sparse_base")
# The committed base policy (an HF checkpoint with the built-in tokenizer's
# files), reproduced by tools/make_base_policy.py.
BASE_POLICY = os.path.join(os.path.dirname(golfjax.__file__), "data", "base_policies", "reverse")
# The sparse-reward regime's base policy: BASE_POLICY after `sparse_base`'s
# short cold start on 6-letter strings (tools/make_base_policy.py --regime sparse).
SPARSE_POLICY = os.path.join(os.path.dirname(golfjax.__file__), "data", "base_policies", "reverse6")


def _rl_common(c: ml_collections.ConfigDict) -> None:
    """What every variant shares: task, model size, sampling, loss."""
    c.task.name = "reverse"
    c.task.kwargs = reverse.RL
    c.model.preset = "task_1m"
    c.sampling.group_size = 8
    # An answer of up to 9 letters (the cold start's copies) and eos, with
    # room for a wrong longer one.
    c.sampling.max_new_tokens = 12
    # Plain prompts are at most 20 tokens; a refinement prompt with one attempt
    # (compact template) at most 110, and a second attempt never fits 112.
    c.sampling.prompt_buckets = (32, 112)
    c.train.prompts_per_step = 8
    c.train.loss = "ppo_clip"
    c.train.advantage = "drgrpo"  # GOLF: Dr.GRPO advantages (no std division).
    c.loss.eps_high = 0.28
    c.loss.dual_clip = 10.0
    c.loss.agg = "seq-mean-token-sum-norm"
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip = 1.0
    c.golf.template = "compact"
    c.golf.max_refinement_prompt_tokens = 112
    c.checkpoint.every = 50


def base_config(stage: int = 1) -> ml_collections.ConfigDict:
    """A stage of the cold start that makes the base policy (train.steps = 0).

    Stage 1 starts from random weights and learns the copy of a revealed
    answer first (all of its first 300 steps are refinement batches); stage 2
    starts from stage 1's export (`model.hf_path`, set by
    tools/make_base_policy.py) and mostly trains the plain reversal, with some
    refinement batches so that the copy is kept.
    """
    c = common.base()
    _rl_common(c)
    c.train.steps = 0
    c.cold_start.steps = 700
    c.cold_start.batch_size = 32
    c.cold_start.lr = 1e-3
    c.cold_start.task_kwargs = reverse.BASE_PLAIN
    c.cold_start.refine_task_kwargs = reverse.BASE_REFINE
    c.cold_start.refine_first_steps = 300
    c.cold_start.refine_fraction = 0.5
    c.optimizer.lr = 1e-3
    c.eval.num_problems = 200
    c.eval.samples = 4
    c.eval.every = 1
    c.checkpoint.every = 700
    if stage == 2:
        c.cold_start.steps = 400
        c.cold_start.refine_first_steps = 0
        c.cold_start.refine_fraction = 0.3
        c.checkpoint.every = 400
    return c


def rl_config(golf: bool) -> ml_collections.ConfigDict:
    """GOLF (`golf=True`) or the GRPO baseline from the committed base policy."""
    c = common.base()
    _rl_common(c)
    c.model.hf_path = BASE_POLICY
    c.task.tokenizer = BASE_POLICY
    c.golf.enabled = golf
    c.train.steps = 60
    # A fresh Adam moves every parameter by about lr per step whatever its
    # gradient, and RL's gradients are noisy: at the cold start's 1e-3 the base
    # policy loses its plain reversal, and at 2e-3 its copy of a revealed
    # answer (issue 19, cause 2; docs/results.md); 1e-4 with a short warmup
    # keeps both.
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 5
    c.eval.every = 10
    c.eval.num_problems = 200
    c.eval.samples = 2
    return c


def sparse_base_config() -> ml_collections.ConfigDict:
    """The cold start that makes the sparse regime's base policy from BASE_POLICY.

    30 steps of 32 plain 6-letter strings (30% of the steps refinement batches
    over 1-9 letters, which keep the copy of a revealed answer), at the cold
    start's lr 1e-3: held-out accuracy on 6-letter strings rises from 0 to
    about 9% greedy and 2-3% sampled, short of the jump that follows within
    another 20 steps (docs/results.md#sparse).
    """
    c = base_config(2)
    c.model.hf_path = BASE_POLICY
    c.task.tokenizer = BASE_POLICY
    c.task.kwargs = reverse.SPARSE
    c.cold_start.steps = 30
    c.cold_start.task_kwargs = {}
    c.checkpoint.every = 30
    return c


def sparse_config(method: str) -> ml_collections.ConfigDict:
    """The sparse-reward regime (docs/algorithms.md#golf-sparse): RL on 6-letter
    strings from SPARSE_POLICY, 24 prompts a step.

    `method`: "golf"; "grpo" (the feedback loop off); "grpo_g16", GRPO with
    groups of 16, the same samples per prompt and per step as GOLF generates
    (its rollout and its refinements).
    """
    c = rl_config(golf=method == "golf")
    c.model.hf_path = SPARSE_POLICY
    c.task.tokenizer = SPARSE_POLICY
    c.task.kwargs = reverse.SPARSE
    c.train.prompts_per_step = 24
    c.golf.log_injected = True  # For the offline replay (benchmarks/golf_vs_grpo.py).
    if method == "grpo_g16":
        c.sampling.group_size = 16
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` shrunk to two steps of 4 prompts (groups halved) and 8 held-out
    strings, to exercise the pipeline."""
    c.train.steps = 2
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 1)  # It ends before the last step.
    c.train.prompts_per_step = 4
    c.sampling.group_size //= 2
    c.eval.every = 2
    c.eval.num_problems = 8
    c.eval.samples = 2
    c.checkpoint.every = 1
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, options = common.parse_variant(arg, VARIANTS)
    if variant in ("base", "base2"):
        c = base_config(2 if variant == "base2" else 1)
    elif variant == "sparse_base":
        c = sparse_base_config()
    elif variant.startswith("sparse_"):
        c = sparse_config(variant.removeprefix("sparse_"))
    else:
        c = rl_config(golf=variant != "grpo")
    if variant == "smoke":
        smoke(c)
    if options.seed is not None:
        c.seed = options.seed
    return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
    return common.seed_sweep(arg, VARIANTS)
