"""VESPO and its baselines under stale data, on the built-in `arith` task.

    python -m experiments.main --config=experiments/configs/vespo.py:vespo,n=16 --workdir=/tmp/vespo_n16

Variants name the loss that trains (`train.loss`, a key of
`golfjax.losses.LOSSES`: `vespo`, `ppo_clip` (GRPO), `gspo`, `sapo`, `cispo`)
under the synchronous rollout schedule at a staleness of
`schedule.minibatches` optimizer steps per rollout, or `async` (the VESPO loss with fully
asynchronous rollout in the released script's regime: sampler log-probs,
weights synced every 4 steps, production throttled by staleness_threshold 1.0,
partial rollouts), or `golf` (GOLF's batches, with
refinements and injection, trained by the VESPO loss at that staleness), or
`moe` (the VESPO loss on a Qwen 3 MoE policy, in the setting of VESPO's
released Qwen3-30B-A3B scripts; see `moe`). Options
follow the variant, comma-separated, typed and checked by
`common.parse_variant`:

- `n=<steps>`: the staleness, optimizer steps per rollout (default 4;
  `train.steps` is rounded up to a multiple of it);
- `async=1`: the variant's loss with fully asynchronous rollout;
- `golf=1`: GOLF's batches in golf.py:arith's sparse-reward regime, trained
  by the variant's loss (the variant `golf` is `vespo,golf=1`);
- `seed=S`;
- `init=DIR`: start from the Hugging Face checkpoint in DIR instead of the cold
  start (benchmarks/staleness_sweep.py starts every run from one exported
  cold-start policy this way);
- `task=math`: the `math` task of golf.py/grpo.py (GSM8K/MATH-style prompts,
  `\boxed{}` answers, no cold start) instead of `arith`, for real checkpoints:
  add `--config.model.hf_path=DIR --config.task.tokenizer=DIR` and
  `--config.task.dataset=DIR` (README.md, "Launching");
- `smoke=1`: the tiny model, two cold-start and two RL steps (mostly
  compilation); the variant `smoke` is `vespo,smoke=1`.

Setup. All 100 one-digit sums, 80 to train on and 20 held out. A cold start
(80 supervised steps on the 80 training sums' reference solutions) leaves the
`task_1m` model with a low accuracy at temperature 1 but a high pass@8
(docs/results.md): most groups of 8 hold a success, so every mini-batch
carries signal. Then 64 optimizer steps of RL, each one mini-batch of 4
prompts x 8 samples: every run generates the same 2,048 samples and takes the
same number of steps whatever the staleness, which only sets how stale each
step's data is. AdamW at lr 3e-4 (higher rates make even on-policy training
collapse on this tiny model, lower ones leave it
where it started within 64 steps). Losses keep the library's defaults (VESPO's
k/lambda = 2/3 and 3/2, PPO eps 0.2 with dual clip 3, GSPO 3e-4/4e-4, SAPO
tau 1/1.05), with GRPO advantages and `token-mean` aggregation as in the VESPO
paper's scripts. Held-out accuracy: 20 problems x 8 samples every 8 steps.

The sweep's measurements and run times are in docs/results.md.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from experiments.configs import common

LOSS_VARIANTS = ("vespo", "ppo_clip", "gspo", "sapo", "cispo")
VARIANTS = LOSS_VARIANTS + ("async", "golf", "smoke", "moe", "qwen3_8b_math",
                            "qwen3_30b_a3b_math")
# The paper runs' variants and the model each trains (`paper_run`).
PAPER_MODELS = {"qwen3_8b_math": "qwen3-8b", "qwen3_30b_a3b_math": "qwen3-30b-a3b"}
MOE_PRESET = "tiny_qwen3_moe"


def arith() -> ml_collections.ConfigDict:
    """The staleness experiment on `arith` (see the module docstring)."""
    c = common.base()
    c.model.preset = "task_1m"
    c.task.name = "arith"
    # All 100 one-digit sums: 80 to train on, 20 held out. The cold start
    # trains on the same 80 reference solutions.
    c.task.kwargs = {"min_digits": 1, "max_digits": 1, "num_train": 80, "num_test": 20}
    c.cold_start.steps = 80
    c.cold_start.batch_size = 32
    c.cold_start.lr = 3e-3
    c.sampling.group_size = 8
    c.sampling.max_new_tokens = 20  # "The answer is 198." and the stop token.
    c.sampling.prompt_buckets = (32, 64, 128, 256)
    c.train.steps = 64
    c.train.prompts_per_step = 4
    c.train.advantage = "grpo"
    c.loss.agg = "token-mean"
    c.optimizer.lr = 3e-4
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip = 1.0
    c.schedule.minibatches = 4
    c.eval.every = 8
    c.eval.num_problems = 20
    c.eval.samples = 8
    c.checkpoint.every = 16
    return c


def math() -> ml_collections.ConfigDict:
    """VESPO's released synchronous run (FloyedShen/VESPO,
    recipe/vespo/run/sync/vespo_N_8.sh) on the `math` task, for real
    checkpoints (`model.hf_path`; the default is the tiny random model).

    1,024 prompt and 15,360 response tokens; mini-batches of 256 prompts x 8
    samples, N of them a rollout (`n=`, default the script's 8: 2,048
    prompts); lr 1e-6 constant, and verl's defaults for the rest, which its
    baselines (`ppo_clip`, ...) train with too: weight decay 0.01, gradient
    clip 1, clip 0.2 / 0.2 with dual clip 3, GRPO advantages, token-mean;
    VESPO's kernel k / lambda 2 / 3 (A >= 0) and 3 / 2 (A < 0), the library's
    defaults. Evaluation: 4 samples at temperature 1 (the script's top-p 0.7
    has no golfjax setting) every 4 rollouts; a checkpoint every rollout
    (`get_config` sets both for the staleness N).
    """
    c = common.task_config("math")  # No cold start; GOLF's settings replaced below.
    c.sampling.max_new_tokens = 15360
    c.sampling.prompt_buckets = (128, 256, 512, 1024)
    c.train.prompts_per_step = 256
    c.schedule.minibatches = 8
    c.train.steps = 64  # 8 rollouts of 2,048 prompts: about the script's one epoch of DAPO-Math-17k.
    c.train.advantage = "grpo"
    c.loss.agg = "token-mean"
    c.loss.eps_high = 0.2
    c.loss.dual_clip = 3.0
    c.optimizer.weight_decay = 0.01
    c.eval.samples = 4
    c.eval.temperature = 1.0
    return c


def moe(c: ml_collections.ConfigDict, init: str) -> ml_collections.ConfigDict:
    """VESPO's released MoE setting, on `tiny_qwen3_moe` or the checkpoint `init`.

    recipe/vespo/run/sync/vespo_N_8.sh trains Qwen3-30B-A3B-Base with a
    batch of 2048 prompts in mini-batches of 256, hence N = 8 optimizer steps
    per rollout, 8 samples per prompt, GRPO advantages, token-mean
    aggregation, VESPO's k/lambda of 2/3 (positive) and 3/2 (negative),
    temperature 1 and top-p 1, Adam at a constant 1e-6, routing replay
    disabled (`model.routing_replay="off"`) and the MoE load-balancing loss
    off (verl's Megatron config sets its type to "none":
    `train.moe_aux_loss_coef=0`); everything but N, the model and, for a
    checkpoint, the learning rate is this file's default already. Expert
    parallelism is the mesh's: experts split over "fsdp" (golfjax/sharding.py).
    On a CPU the policy is `tiny_qwen3_moe` from `arith`'s cold start; with
    `init=DIR` (a local Qwen3-30B-A3B-Base, with `task=math`) the learning
    rate is the scripts' constant 1e-6 (arith's is 3e-4).
    """
    c.model.preset = MOE_PRESET
    c.schedule.minibatches = 8
    if init:
        c.optimizer.lr = 1e-6
    return c


def paper_run(c: ml_collections.ConfigDict, async_rollout: bool, preset: str) -> None:
    """`qwen3_30b_a3b_math`: `math` on the scripts' Qwen3-30B-A3B-Base (the
    `moe` variant's setting at its real size), and `qwen3_8b_math`: on the
    dense Qwen3-8B, each with the memory settings of the slice README.md
    names (docs/results.md#aot). Synchronous: a v5p-64 (32 chips; README.md of
    FloyedShen/VESPO runs N = 8 on 32 GPUs), one row per device per
    micro-batch (the script's dynamic batches of 16,384 tokens per GPU), 32
    prompts a sampler call. Fully asynchronous
    (recipe/vespo/run/fully_async/vespo_S_1.0_N_4.sh: 48 of 64 GPUs sample,
    16 train): golfjax.aot compiles one process group, not a job of two
    (`schedule.rollout_processes`), so a one-host v5p-8, 2 of its 4 chips sampling (3
    cannot split the embedding's 4,096 columns) 2 prompts a call, so that
    each holds 8 rows' 16k-slot caches beside two parameter snapshots.
    """
    c.model.preset = preset
    c.model.remat = True
    learner_chips = 2 if async_rollout else 32
    if preset == "qwen3-30b-a3b":
        # `qwen3_30b_a3b_math`: the scripts' own model with their expert
        # parallelism of 8 (experts over fsdp = 8), each expert's width and
        # the attention heads over tensor = 4: one row per data shard.
        c.mesh.tensor = 4
        learner_chips //= c.mesh.tensor
    c.train.micro_batches = c.train.prompts_per_step * c.sampling.group_size // learner_chips
    c.sampling.prompts_per_call = 32
    if async_rollout:
        c.schedule.rollout_devices = 2
        c.sampling.prompts_per_call = 2


OPTIONS = ("n", "async", "golf", "seed", "init", "smoke", "task")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, options = common.parse_variant(arg, VARIANTS, OPTIONS)
    paper = PAPER_MODELS.get(variant)
    if paper == "qwen3-30b-a3b" and options.async_rollout:
        raise ValueError("vespo.py:qwen3_30b_a3b_math runs synchronously only: golfjax's"
                         " asynchronous rollout is single-host, and a v5p-8's 2 learner chips"
                         " cannot hold the 30B model's training state")
    if paper:
        variant, options = "vespo", dataclasses.replace(options, task="math")
    c = arith() if options.task == "arith" else math()
    if variant == "smoke":
        variant, options = "vespo", dataclasses.replace(options, smoke=True)
    if variant == "golf":
        variant, options = "vespo", dataclasses.replace(options, golf=True)
    if variant == "moe":
        moe(c, options.init)
    c.train.loss = "vespo" if variant in ("async", "moe") else variant
    if variant == "async" or options.async_rollout:
        # The paper's fully-async setting, the schedule's defaults (the
        # released recipe/vespo/run/fully_async script): weights synced every
        # 4 learner steps, production throttled at (1 + staleness_threshold
        # 1.0) x 4 mini-batches beyond the last sync (a mini-batch trains at
        # most 7 steps after its policy), partial rollouts, behaviour
        # log-probs from the sampler. GOLF's batches sample whole rollouts.
        c.schedule.async_rollout = True
        c.schedule.minibatches = 1
        c.schedule.partial_rollout = not options.golf
        # Partial rollouts check for new weights every chunk: 1,024 of the
        # math responses' 15,360 tokens (each chunk re-prefills the row; the
        # built-in tasks' responses fit one chunk of 4 tokens a few times).
        c.schedule.rollout_chunk_tokens = 1024 if options.task == "math" else 4
        c.train.recompute_old_logp = False
        if options.task == "math":
            c.eval.samples = 1  # One sample per problem in evaluation.
    if options.golf and options.task == "math":
        c.golf.enabled = True  # math()'s feedback settings are GOLF's already.
        c.sampling.prompt_buckets = common.task_config("math").sampling.prompt_buckets  # Refinement prompts.
    elif options.golf:
        # GOLF's sparse-reward regime, as golf.py:arith: its task, cold start
        # and refinement prompts.
        regime = common.task_config("arith")
        c.golf.enabled = True
        c.golf.template = regime.golf.template
        c.golf.max_refinement_prompt_tokens = regime.golf.max_refinement_prompt_tokens
        c.task.kwargs = regime.task.kwargs
        c.cold_start = regime.cold_start
        c.eval.samples = regime.eval.samples  # 10 held-out sums: more samples each.
    if options.n is not None:
        c.schedule.minibatches = options.n
    if options.task == "math":  # The scripts' test_freq and save_freq.
        rollout_steps = 1 if c.schedule.async_rollout else c.schedule.minibatches
        c.eval.every = 20 if c.schedule.async_rollout else 4 * rollout_steps
        c.checkpoint.every = 20 if c.schedule.async_rollout else rollout_steps
    if paper:
        paper_run(c, c.schedule.async_rollout, paper)
    if options.seed is not None:
        c.seed = options.seed
    if options.init:
        c.model.hf_path = options.init
        c.cold_start.steps = 0
    if options.smoke:
        common.smoke(c)
        c.schedule.minibatches = min(c.schedule.minibatches, 2)
        c.eval.every = 100  # Evaluated at the start and the end only.
        if variant == "moe":
            c.model.preset = MOE_PRESET
    n = c.schedule.minibatches
    c.train.steps = -(-c.train.steps // n) * n
    return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
    """Work units for `launch/xm_launch.py`.

    With no variant (`--config=experiments/configs/vespo.py`), the staleness sweep
    of benchmarks/staleness_sweep.py: staleness in {1, 4, 16, 64} x {vespo, ppo_clip,
    gspo, sapo} x 2 seeds. A named variant fixes the loss and the staleness itself, so its
    sweep is three seeds (or the one run, when it names `seed=`).
    """
    if not arg:
        return [
            {"train.loss": loss, "schedule.minibatches": n, "seed": seed}
            for loss in ("vespo", "ppo_clip", "gspo", "sapo")
            for n in (1, 4, 16, 64)
            for seed in range(2)
        ]
    return common.seed_sweep(arg, VARIANTS, OPTIONS)
