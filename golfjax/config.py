"""Typed run configuration, built and validated once from an `ml_collections.ConfigDict`.

Experiment configs (experiments/configs/*.py) are ConfigDicts so that absl
flags can override any key (`--config.optimizer.lr=1e-6`). `build` turns one
into a `RunConfig` of frozen dataclasses here, exactly once; library code only
ever sees the dataclasses, and the components take their section as is: the
train step takes `TrainSection` and `LossConfig`, the optimizer
`OptimizerConfig`, the sampler a `SamplingConfig` made from `SamplingSection`
plus the values derived from the tokenizer and the mesh
(golfjax/components.py). Every default lives in one dataclass: a section below, or
the library dataclass it is (`LossConfig`, `OptimizerConfig`) or takes its
defaults from (`SamplingConfig`). The ConfigDict conversion itself (`build`,
`to_dict`) is golfjax/config_dict.py.

Validation runs before anything is built or written: each field in its
section's `__post_init__`, the constraints between sections in `validate`.
Every error names the full dotted key and what it accepts, e.g.
`config.eval.every=0; expected >= 1`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import numpy as np

from golfjax import advantages
from golfjax import losses
from golfjax.config_dict import ConfigError
from golfjax.config_dict import build  # noqa: F401  (config_lib.build: the entry point)
from golfjax.config_dict import to_dict  # noqa: F401
from golfjax.losses import LossConfig
from golfjax.losses import kl
from golfjax.optimizer_config import OptimizerConfig
from golfjax.sampling_config import SamplingConfig

KL_ESTIMATORS = kl.ESTIMATORS  # What the KL term's estimator accepts.
# Where the KL term goes: the loss (TRL's beta, verl's use_kl_loss) or each
# sequence's reward (verl's use_kl_in_reward); docs/algorithms.md#kl-penalty.
KL_PLACES = ("loss", "reward")
# What the run loop does after a skipped non-finite update (golfjax/train/nonfinite.py).
NONFINITE_MODES = ("skip", "raise")


def _check(section: Any, checks: Mapping[str, tuple[bool, str]]) -> None:
    """Raises `name=value; expected ...` for the first failed check."""
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"{name}={getattr(section, name)!r}; expected {expected}")


def _one_of(section: Any, name: str, allowed: tuple[str, ...]) -> tuple[bool, str]:
    return getattr(section, name) in allowed, f"one of {', '.join(allowed)}"


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which policy: a named preset (random init) or a local HF checkpoint."""

    preset: str = "tiny"
    hf_path: str = ""  # A local directory; overrides `preset` when set.
    # Dims without a checkpoint (random init, or `python -m golfjax.aot`): a
    # config.json path instead of `preset`, and ModelConfig fields replacing
    # the preset's or its (e.g. {"num_layers": 2}); neither with hf_path.
    hf_config: str = ""
    dims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    remat: bool = False
    # The program's attention and memory settings (`ModelConfig`'s fields of
    # the same names); "" and 0 keep the model config's own.
    attention: str = ""  # One of models.config.ATTENTION_IMPLEMENTATIONS.
    attention_block: int = 0  # Query/key block of the blockwise attention.
    mlp_chunk: int = 0  # With remat: tokens per MLP chunk.
    # How the sampler's cached forward runs the layers: one of
    # models.config.DECODE_LAYERS ("auto": scanned on TPU, unrolled elsewhere).
    decode_layers: str = ""
    # MoE policies: "rollout" replays the sampler's routes in the train step
    # (models.config.ROUTING_REPLAY; docs/algorithms.md).
    routing_replay: str = "off"

    def __post_init__(self) -> None:
        from golfjax.models.config import (ATTENTION_IMPLEMENTATIONS, DECODE_LAYERS, PRESETS,
                                           ROUTING_REPLAY, ModelConfig)

        if not (self.hf_path or self.hf_config):
            _check(self, {"preset": _one_of(self, "preset", tuple(sorted(PRESETS)))})
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        _check(self, {
            "hf_config": (not self.hf_config or (not self.hf_path and os.path.isfile(self.hf_config)),
                          "a config.json file, and hf_path unset (its config is the checkpoint's)"),
            "dims": (not self.dims or (not self.hf_path and set(self.dims) <= fields),
                     "ModelConfig fields (" + ", ".join(sorted(fields)) + "), and hf_path unset"),
        })
        _check(self, {
            "attention": (self.attention in ("", *ATTENTION_IMPLEMENTATIONS),
                          "one of " + ", ".join(ATTENTION_IMPLEMENTATIONS) + ", or '' (the model's)"),
            "attention_block": (self.attention_block >= 0, ">= 1, or 0 (the model's)"),
            "mlp_chunk": (self.mlp_chunk >= 0, ">= 1, or 0 (the model's)"),
            "decode_layers": (self.decode_layers in ("", *DECODE_LAYERS),
                              "one of " + ", ".join(DECODE_LAYERS) + ", or '' (the model's)"),
            "routing_replay": _one_of(self, "routing_replay", ROUTING_REPLAY),
        })
        if (self.routing_replay != "off" and not (self.hf_path or self.hf_config)
                and not PRESETS[self.preset].num_experts):
            raise ValueError(f"routing_replay={self.routing_replay!r} but preset={self.preset!r} is"
                             " not an MoE model; expected 'off'")

    def overrides(self) -> dict[str, Any]:
        """The `ModelConfig` fields this section sets (remat, attention, ...)."""
        fields = {"remat": True} if self.remat else {}
        fields |= {name: getattr(self, name)
                   for name in ("attention", "attention_block", "mlp_chunk", "decode_layers")
                   if getattr(self, name)}
        if self.routing_replay != "off":
            fields["routing_replay"] = self.routing_replay
        return fields


# Tasks whose constructor takes `dataset=DIR` (`TaskSection.dataset`).
DATASET_TASKS = ("math",)


@dataclasses.dataclass(frozen=True)
class TaskSection:
    """The task (`golfjax.rewards.TASKS`), its constructor arguments and its prompts."""

    name: str = "arith"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # "builtin": the character-level tokenizer made for the built-in tasks;
    # otherwise a local tokenizer directory or SentencePiece file.
    tokenizer: str = "builtin"
    # A dataset directory built by `python -m golfjax.data.prepare`: the task
    # reads its problems from it, and RL prompts come through the grain
    # pipeline (golfjax/data/pipeline.py). Only tasks in DATASET_TASKS read one.
    dataset: str = ""
    # Chat-template variables of every prompt the policy sees: rollout,
    # refinement, evaluation and cold start (e.g. Qwen 3's
    # `{"enable_thinking": False}`).
    template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from golfjax.rewards import TASKS

        _check(self, {"name": _one_of(self, "name", tuple(sorted(TASKS)))})
        if self.dataset and self.name not in DATASET_TASKS:
            raise ValueError(
                f"dataset={self.dataset!r} but task {self.name!r} makes its own problems;"
                f" datasets are read by the tasks {', '.join(DATASET_TASKS)}"
            )
        if self.dataset and "dataset" in self.kwargs:
            raise ValueError("dataset: set twice, as task.dataset and task.kwargs.dataset; keep one")
        bad = sorted(k for k in self.template_kwargs if not isinstance(k, str) or not k.isidentifier())
        if bad:
            raise ValueError(
                f"template_kwargs: key {bad[0]!r} is not an identifier; expected chat-template variable names")

    def task_kwargs(self) -> dict[str, Any]:
        """The task constructor's keyword arguments: `kwargs`, plus `dataset` when set."""
        return {**self.kwargs, "dataset": self.dataset} if self.dataset else dict(self.kwargs)


_SAMPLER = SamplingConfig()  # The sampler's defaults are the sampling section's.


@dataclasses.dataclass(frozen=True)
class SamplingSection:
    """Rollout sampling; the fields and defaults of `golfjax.sampling.SamplingConfig`.

    The sampler's other fields (stop ids, pad id, batch buckets) are derived
    from the tokenizer and the mesh where the sampler is built;
    `prompts_per_call` caps the batch buckets.
    """

    temperature: float = _SAMPLER.temperature
    top_p: float = _SAMPLER.top_p
    top_k: int = _SAMPLER.top_k
    max_new_tokens: int = _SAMPLER.max_new_tokens
    # G: an RL group needs several samples, unlike the sampler's plain default of 1.
    group_size: int = 8
    prompt_buckets: tuple[int, ...] = _SAMPLER.prompt_buckets
    decode_loops: int = _SAMPLER.decode_loops
    # The most prompts one sampler call takes (0: any number): more are
    # sampled in several calls, so the KV cache holds this many prompts' rows.
    prompts_per_call: int = 0

    def __post_init__(self) -> None:
        _check(self, {
            "temperature": (self.temperature >= 0, ">= 0 (0: greedy)"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "top_k": (self.top_k >= 0, ">= 0 (0: off)"),
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "group_size": (self.group_size >= 1, ">= 1"),
            "prompt_buckets": (bool(self.prompt_buckets) and self.prompt_buckets[0] >= 1 and list(
                self.prompt_buckets) == sorted(set(self.prompt_buckets)), "increasing lengths >= 1"),
            "decode_loops": (self.decode_loops >= 1, ">= 1"),
            "prompts_per_call": (self.prompts_per_call >= 0, ">= 0 (0: no limit)"),
        })


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The RL phase: how many steps, how big, which objective.

    The train step (golfjax/train/step.py) takes this section itself; `loss`
    is the one setting that chooses the policy loss (`golfjax.losses.LOSSES`,
    e.g. "vespo"), whatever the rollout schedule (`ScheduleSection`).
    """

    steps: int = 100  # Optimizer steps of RL (0: cold start only).
    prompts_per_step: int = 16  # B: prompts of one optimizer step's mini-batch.
    loss: str = "ppo_clip"
    off_policy_loss: str = "shaping"  # GOLF's injected tokens.
    advantage: str = "grpo"
    micro_batches: int = 1  # M: gradient accumulation; the rows N must divide by it.
    # KL penalty to a frozen reference policy (docs/algorithms.md#kl-penalty):
    # its weight (0: no term and no reference kept), its estimator (k1, k2,
    # k3; verl's kl, mse, low_var_kl), and where it goes: "loss" adds
    # kl_coef * KL to the objective, "reward" subtracts kl_coef * (the
    # sequence's summed KL) from each reward before the advantages.
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"
    # The reference: "" is RL's starting parameters (the cold start's last, or
    # the model's), else a local Hugging Face checkpoint of the same architecture.
    ref_path: str = ""
    entropy_coef: float = 0.0
    logp_chunk: int = 128  # Response positions per log-prob chunk (memory vs speed).
    # Score old_logp with the trainer once per rollout, before its first
    # update; False uses the sampler's log-probs.
    recompute_old_logp: bool = True
    # GOLF's batches: log the gradient norm and share of the off-policy term,
    # the original groups and the refinement groups (golfjax/train/step.py;
    # a gradient buffer per part, a second backward pass where injected).
    grad_shares: bool = True
    nonfinite: str = "skip"  # "skip" a non-finite update, or also "raise".
    # With nonfinite = "skip", a run stops once more than this many steps in a
    # row were skipped (golfjax/train/nonfinite.py).
    max_consecutive_skips: int = 10
    # MoE policies: the weight of transformers' load-balancing loss. 0 (off)
    # as VESPO's scripts run Qwen3-30B-A3B (verl's Megatron config sets
    # moe_router_load_balancing_type="none"); transformers' own is 0.001.
    moe_aux_loss_coef: float = 0.0

    def __post_init__(self) -> None:
        for name, get in (("loss", losses.get_loss), ("off_policy_loss", losses.get_off_policy_loss),
                      ("advantage", advantages.get_advantage)):
            try:
                get(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        _check(self, {
            "steps": (self.steps >= 0, ">= 0 (0: cold start only)"),
            "prompts_per_step": (self.prompts_per_step >= 1, ">= 1"),
            "micro_batches": (self.micro_batches >= 1, ">= 1"),
            "kl_coef": (0 <= self.kl_coef < math.inf, "a finite number >= 0"),
            "kl_estimator": _one_of(self, "kl_estimator", KL_ESTIMATORS),
            "kl_in": _one_of(self, "kl_in", KL_PLACES),
            "ref_path": (not self.ref_path or self.kl_coef > 0,
                         "'' while kl_coef = 0 (no KL term reads a reference)"),
            "entropy_coef": (0 <= self.entropy_coef < math.inf, "a finite number >= 0"),
            "logp_chunk": (self.logp_chunk >= 1, ">= 1"),
            "nonfinite": _one_of(self, "nonfinite", NONFINITE_MODES),
            "max_consecutive_skips": (self.max_consecutive_skips >= 0, ">= 0"),
            "moe_aux_loss_coef": (self.moe_aux_loss_coef >= 0, ">= 0 (0: off)"),
        })


@dataclasses.dataclass(frozen=True)
class ColdStartSection:
    """Supervised warm-up on the task's reference solutions (0 steps: none).

    golfjax/loops/cold_start.py builds its batches. It trains at the constant
    rate `lr` with an optimizer of its own (the `optimizer` section's other
    settings, no warmup, `cold_start_optimizer`). RL then starts with fresh
    optimizer moments, and `optimizer.warmup_steps` ramps RL's learning rate
    from 0 (golfjax/components.py explains the choice).
    """

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    # Overrides of task.kwargs for the cold-start problems (e.g. easier ones).
    task_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Share of steps whose batch is in refinement format (failed attempts +
    # critiques -> the reference solution), so the policy can use feedback from
    # RL step 1 (golfjax/loops/cold_start.py).
    refine_fraction: float = 0.0
    # Overrides of the cold-start task kwargs for the refinement-format batches'
    # problems ({}: the cold start's). Problems the policy cannot solve yet make
    # those batches teach the use of the feedback rather than the task.
    refine_task_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The first `refine_first_steps` steps are all refinement batches, the rest
    # follow refine_fraction: the use of the critique is learnt first.
    refine_first_steps: int = 0

    def __post_init__(self) -> None:
        _check(self, {
            "steps": (self.steps >= 0, ">= 0 (0: no cold start)"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (0 < self.lr < math.inf, "a finite number > 0"),
            "refine_fraction": (0 <= self.refine_fraction <= 1, "in [0, 1]"),
            # steps = 0 switches the cold start off, whatever the other keys say.
            "refine_first_steps": (
                self.refine_first_steps >= 0 and not (self.steps and self.refine_first_steps > self.steps),
                f"0 to steps = {self.steps}",
            ),
        })
        if self.refine_task_kwargs and not self.refines:
            raise ValueError(
                f"refine_task_kwargs={dict(self.refine_task_kwargs)} but refine_fraction = 0 and"
                " refine_first_steps = 0: no refinement batch would use them")

    @property
    def refines(self) -> bool:
        """Whether any cold-start batch is in refinement format."""
        return self.refine_fraction > 0 or self.refine_first_steps > 0

    def is_refine_step(self, seed: int, step: int) -> bool:
        """Whether cold-start `step` trains on a refinement batch (drawn from
        seed and step, so a resumed run makes the same choice)."""
        return (step < self.refine_first_steps
                or np.random.default_rng([seed, step]).random() < self.refine_fraction)


@dataclasses.dataclass(frozen=True)
class GolfSection:
    """GOLF's feedback loop (golfjax/loops/golf.py); `enabled=False` is the GRPO baseline."""

    enabled: bool = False
    critic: str = ""  # "" takes the task's default critic.
    strategy: str = "adaptive"
    success_threshold: float = -1.0  # < 0 takes the task's threshold.
    n_inject: int = 1
    hybrid_prob: float = 0.3
    include: str = "failed"
    template: str = "default"  # golfjax.feedback.refinement.TEMPLATES
    max_refinement_prompt_tokens: int = 512
    split_mean: bool = False
    # The knobs of docs/algorithms.md#golf-knobs, each at the released code's
    # choice: the refinement groups train (on-policy, under their refinement
    # prompt), and the failures of a group that received an injection keep
    # their (negative) group-relative advantage.
    train_refinements: bool = True
    keep_failure_advantage: bool = True
    # Write each step's injected rows to `<workdir>/injected.jsonl` (the
    # offline replay of benchmarks/golf_vs_grpo.py reads them).
    log_injected: bool = False

    def __post_init__(self) -> None:
        from golfjax.feedback import CRITICS

        _check(self, {
            "critic": (self.critic in ("",) + tuple(CRITICS), f"'' or one of {', '.join(sorted(CRITICS))}"),
            "strategy": _one_of(self, "strategy", ("adaptive", "always", "hybrid")),
            "success_threshold": (self.success_threshold <= 1, "<= 1 (< 0: the task's)"),
            "n_inject": (self.n_inject >= 1, ">= 1"),
            "hybrid_prob": (0 <= self.hybrid_prob <= 1, "in [0, 1]"),
            "include": _one_of(self, "include", ("failed", "all")),
            "template": _one_of(self, "template", ("default", "compact")),
            "max_refinement_prompt_tokens": (self.max_refinement_prompt_tokens >= 1, ">= 1"),
        })


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    """How rollouts feed optimizer steps, for any `train.loss`.

    Synchronous (golfjax/loops/schedule.py): a rollout samples `minibatches`
    mini-batches of `train.prompts_per_step` prompts each with one policy, and
    trains them in order, one optimizer step each; mini-batch j (1-based) is
    trained by a policy j - 1 steps ahead of the one that sampled it (VESPO's
    staleness setting is `minibatches`). `minibatches = 1` is on-policy
    training. `train.steps` counts optimizer steps and must be a multiple of
    `minibatches`.

    Asynchronous (`async_rollout`, golfjax/loops/async_rollout.py): rollouts
    are produced while the learner trains, by the weights published every
    `sync_every` learner steps; production pauses once it is
    `(1 + staleness_threshold) * sync_every` mini-batches ahead of what the
    learner had consumed at the last sync (nothing is dropped). The defaults
    are VESPO's released fully-async script (verl's
    recipe/fully_async_policy: trigger_parameter_sync_step=4,
    staleness_threshold=1.0, partial_rollout=True).
    """

    minibatches: int = 1
    # Rollouts are produced on another thread (or process group) while the learner trains.
    async_rollout: bool = False
    sync_every: int = 4  # Async: learner steps between weight syncs.
    # Async: how far production may run ahead of the learner, in units of
    # sync_every mini-batches beyond one sync's worth (the throttle).
    staleness_threshold: float = 1.0
    # Async: a generation in flight at a weight sync continues under the new
    # weights (each token's behaviour log-prob from the weights that made it).
    partial_rollout: bool = True
    # Async partial rollouts: decode steps between weight checks (0: whole responses).
    rollout_chunk_tokens: int = 0
    # Async: the last `rollout_devices` devices sample, the others train (0: shared).
    rollout_devices: int = 0
    # Async: the last `rollout_processes` processes of a multi-process job form
    # the rollout group, the others train (golfjax/parallel/; 0: one process).
    rollout_processes: int = 0

    def __post_init__(self) -> None:
        _check(self, {
            "minibatches": (self.minibatches >= 1, ">= 1"),
            "sync_every": (self.sync_every >= 1, ">= 1"),
            "staleness_threshold": (0 <= self.staleness_threshold < float("inf"), ">= 0 and finite"),
            "rollout_chunk_tokens": (self.rollout_chunk_tokens >= 0, ">= 0 (0: whole responses)"),
            "rollout_devices": (self.rollout_devices >= 0 and not (self.rollout_devices and not self.async_rollout),
                                ">= 0, and 0 unless async_rollout (only the worker samples on devices of its own)"),
            "rollout_processes": (self.rollout_processes >= 0 and not (self.rollout_processes and (
                not self.async_rollout or self.rollout_devices)),
                                  ">= 0, and 0 unless async_rollout with rollout_devices=0 (a rollout group"
                                  " samples on all of its processes' devices)"),
        })

    @property
    def max_ahead(self) -> int:
        """The throttle: mini-batches production may hold beyond what the
        learner had consumed at the last weight sync."""
        return max(1, math.ceil((1 + self.staleness_threshold) * self.sync_every))


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation: mean accuracy and pass@k every `every` RL steps."""

    every: int = 10
    num_problems: int = 64
    samples: int = 4  # k of pass@k
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check(self, {
            "every": (self.every >= 1, ">= 1 (RL steps between evaluations)"),
            "num_problems": (self.num_problems >= 1, ">= 1"),
            "samples": (self.samples >= 1, ">= 1 (k of pass@k)"),
            "temperature": (self.temperature >= 0, ">= 0 (0: greedy)"),
        })


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 10  # Steps between checkpoints (the last step and a SIGTERM always save).
    keep: int = 3

    def __post_init__(self) -> None:
        _check(self, {"every": (self.every >= 1, ">= 1"), "keep": (self.keep >= 1, ">= 1")})


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Mesh sizes for ("data", "fsdp", "tensor"); -1 takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        _check(self, {name: (size >= 1 or size == -1, ">= 1 or -1 (the rest)")
                      for name, size in zip(("data", "fsdp", "tensor"), sizes)})
        if sizes.count(-1) > 1:
            raise ValueError(f"data, fsdp, tensor = {sizes}: at most one may be -1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    model: ModelSection = ModelSection()
    task: TaskSection = TaskSection()
    sampling: SamplingSection = SamplingSection()
    train: TrainSection = TrainSection()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    cold_start: ColdStartSection = ColdStartSection()
    golf: GolfSection = GolfSection()
    schedule: ScheduleSection = ScheduleSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    mesh: MeshSection = MeshSection()

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed={self.seed}; expected an int in [0, 2**31)")

    @property
    def total_steps(self) -> int:
        """Global steps of the run: the cold start's, then RL's."""
        return self.cold_start.steps + self.train.steps

    @property
    def rl_optimizer(self) -> OptimizerConfig:
        """RL's optimizer: the `optimizer` section, its schedule's horizon RL's
        `train.steps` (the schedule counts RL's own updates from 0)."""
        return dataclasses.replace(self.optimizer, total_steps=max(self.train.steps, 1))

    @property
    def cold_start_optimizer(self) -> OptimizerConfig:
        """The cold start's optimizer: the `optimizer` section at the constant
        rate `cold_start.lr`, no warmup, over `cold_start.steps`."""
        return dataclasses.replace(self.optimizer, lr=self.cold_start.lr, warmup_steps=0, schedule="constant",
                                   total_steps=max(self.cold_start.steps, 1))


def _check_rl(cfg: RunConfig) -> None:
    """The schedule's horizon, greedy groups: RL settings that train wrongly without an error."""
    opt, steps = cfg.optimizer, cfg.train.steps
    if opt.total_steps and opt.total_steps != steps:
        raise ConfigError(
            f"config.optimizer.total_steps={opt.total_steps} but config.train.steps={steps}: the"
            " learning-rate schedule spans RL's steps; leave total_steps at 0 (the default) to take them")
    # The warmup ends before the last update: at the peak rate (constant), or
    # with a step left to decay over (cosine, whose last update is at the floor).
    room = steps - 1 if opt.schedule == "cosine" else steps
    if steps and opt.warmup_steps and opt.warmup_steps >= room:
        raise ConfigError(
            f"config.optimizer.warmup_steps={opt.warmup_steps}; expected < {room} (config.train.steps ="
            f" {steps}{' - 1' if opt.schedule == 'cosine' else ''}), or the rate never reaches"
            f" {'its floor' if opt.schedule == 'cosine' else 'config.optimizer.lr'}")
    sampling = cfg.sampling
    if steps and sampling.temperature == 0 and sampling.group_size > 1:
        raise ConfigError(
            f"config.sampling.temperature=0 (greedy) with config.sampling.group_size={sampling.group_size}:"
            f" a group's samples would be identical and every {cfg.train.advantage!r} advantage"
            " (config.train.advantage) 0; expected a temperature > 0")


def validate(cfg: RunConfig, device_count: int, process_count: int = 1) -> None:
    """The constraints between sections, checked before anything is built.

    Raises:
      ConfigError naming the dotted keys involved and what they accept.
    """
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    rollout_processes = cfg.schedule.rollout_processes
    if rollout_processes:
        if not rollout_processes < process_count:
            raise ConfigError(
                f"config.schedule.rollout_processes={rollout_processes} leaves no process to train on"
                f" ({process_count} processes)")
        if cfg.train.kl_coef > 0:
            raise ConfigError(
                f"config.schedule.rollout_processes={rollout_processes} needs config.train.kl_coef=0: the"
                " rollout group does not hold the KL reference")
        # Every process of the job has as many devices; the learner's are its share.
        device_count = device_count * (process_count - rollout_processes) // process_count
        process_count -= rollout_processes
    devices = device_count - (cfg.schedule.rollout_devices if cfg.schedule.async_rollout else 0)
    if devices < 1:
        raise ConfigError(
            f"config.schedule.rollout_devices={cfg.schedule.rollout_devices} leaves no device to"
            f" train on ({device_count} devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes and devices % known == 0:
        sizes[sizes.index(-1)] = devices // known
    if int(np.prod(sizes)) != devices:
        raise ConfigError(
            f"config.mesh: data x fsdp x tensor = {cfg.mesh.data} x {cfg.mesh.fsdp} x"
            f" {cfg.mesh.tensor} does not fit the {devices} training devices")
    shards = sizes[0] * sizes[1]
    rows = {
        "config.train.prompts_per_step * config.sampling.group_size":
            cfg.train.prompts_per_step * cfg.sampling.group_size,
    }
    if cfg.cold_start.steps:
        rows["config.cold_start.batch_size"] = cfg.cold_start.batch_size
    for name, value in rows.items():
        if value % shards:
            raise ConfigError(f"{name} = {value} rows do not split over the mesh's {shards} data x fsdp devices")
        if name.startswith("config.train") and value % cfg.train.micro_batches:
            raise ConfigError(
                f"{name} = {value} rows do not split into config.train.micro_batches ="
                f" {cfg.train.micro_batches}")
    _check_rl(cfg)
    if cfg.train.steps % cfg.schedule.minibatches:
        raise ConfigError(
            f"config.train.steps={cfg.train.steps} is not a multiple of config.schedule.minibatches ="
            f" {cfg.schedule.minibatches}; every rollout is trained to the end")
    if cfg.schedule.rollout_devices and cfg.train.recompute_old_logp:
        raise ConfigError(
            f"config.schedule.rollout_devices={cfg.schedule.rollout_devices} needs"
            " config.train.recompute_old_logp=False (the sampler's log-probs)")
    if cfg.model.routing_replay != "off" and cfg.golf.enabled:
        raise ValueError(
            f"config.model.routing_replay={cfg.model.routing_replay!r} needs config.golf.enabled=False:"
            " GOLF's refinements are sampled under other prompts, so no route of theirs replays")
    if cfg.schedule.async_rollout and process_count > 1 and not rollout_processes:
        raise ConfigError(
            f"config.schedule.async_rollout=True in a multi-process job ({process_count} processes) needs"
            " config.schedule.rollout_processes >= 1 (the processes that roll out); or use the synchronous"
            " schedule (config.schedule.minibatches)")
    partial = cfg.schedule.async_rollout and cfg.schedule.partial_rollout
    if partial and cfg.golf.enabled:
        raise ConfigError(
            "config.schedule.partial_rollout=True needs config.golf.enabled=False (GOLF's source samples whole"
            " rollouts); set config.schedule.partial_rollout=False")
    if partial and cfg.train.recompute_old_logp:
        raise ConfigError(
            "config.schedule.partial_rollout=True needs config.train.recompute_old_logp=False: no single policy"
            " version sampled a partial rollout, so old_logp is the sampler's per-token log-prob")
    from golfjax.rewards import make_task  # The tasks check their own arguments.

    kwargs = {"config.task.kwargs": cfg.task.task_kwargs()}
    if cfg.cold_start.steps:
        kwargs["config.cold_start.task_kwargs"] = {**kwargs["config.task.kwargs"], **cfg.cold_start.task_kwargs}
    for key, task_kwargs in kwargs.items():
        try:
            make_task(cfg.task.name, **task_kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: task {cfg.task.name!r} refuses {task_kwargs}: {e}") from None
    readers = rollout_processes or process_count  # The processes that draw prompts.
    if cfg.task.dataset and cfg.train.prompts_per_step % readers:
        raise ConfigError(
            f"config.train.prompts_per_step = {cfg.train.prompts_per_step} does not split over"
            f" {readers} processes, each reading its own shard of config.task.dataset")
