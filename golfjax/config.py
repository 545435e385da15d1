"""Typed run configuration, built once from an `ml_collections.ConfigDict`.

Experiment configs (experiments/configs/*.py) are ConfigDicts so that absl
flags can override any key (`--config.optimizer.lr=1e-6`). The runner turns
one into a `RunConfig` of frozen dataclasses here, exactly once; library code
only ever sees the dataclasses. Every default lives in a dataclass below (or in
the library dataclasses they reuse: `LossConfig`, `OptimizerConfig`), so a
config file only states what differs from them.

Validation names the offending key by its full dotted path and says what it
accepts, e.g. `config.optimizer.lr: OptimizerConfig.lr=0.0; expected > 0` or
`config.train: unknown key 'lrr'; known keys: advantage, ...`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

import numpy as np

from golfjax import advantages
from golfjax import losses
from golfjax.losses import LossConfig
from golfjax.train.state import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which policy: a named preset (random init) or a local HF checkpoint."""

    preset: str = "tiny"
    hf_path: str = ""  # A local directory; overrides `preset` when set.
    remat: bool = False


# Tasks whose constructor takes `dataset=DIR` (`TaskSection.dataset`).
DATASET_TASKS = ("math",)


@dataclasses.dataclass(frozen=True)
class TaskSection:
    """The task (`golfjax.rewards.TASKS`) and its constructor arguments."""

    name: str = "arith"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # "builtin": the character-level tokenizer made for the built-in tasks;
    # otherwise a local tokenizer directory or SentencePiece file.
    tokenizer: str = "builtin"
    # A dataset directory built by `python -m golfjax.data.prepare`: the task
    # reads its problems from it, and RL prompts come through the grain
    # pipeline (golfjax/data/pipeline.py). Only tasks in DATASET_TASKS read one.
    dataset: str = ""

    def __post_init__(self) -> None:
        if self.dataset and self.name not in DATASET_TASKS:
            raise ValueError(
                f"dataset={self.dataset!r} but task {self.name!r} makes its own problems;"
                f" datasets are read by the tasks {', '.join(DATASET_TASKS)}"
            )
        if self.dataset and "dataset" in self.kwargs:
            raise ValueError("dataset is set twice, as task.dataset and task.kwargs.dataset; keep one")

    def task_kwargs(self) -> dict[str, Any]:
        """The task constructor's keyword arguments: `kwargs`, plus `dataset` when set."""
        return {**self.kwargs, "dataset": self.dataset} if self.dataset else dict(self.kwargs)


@dataclasses.dataclass(frozen=True)
class SamplingSection:
    """Rollout sampling (see `golfjax.sampling.SamplingConfig`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    group_size: int = 8
    prompt_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    decode_loops: int = 4


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The RL phase: how many steps, how big, which objective."""

    steps: int = 100
    prompts_per_step: int = 16
    loss: str = "ppo_clip"
    off_policy_loss: str = "shaping"
    advantage: str = "grpo"
    micro_batches: int = 1
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    logp_chunk: int = 128
    # Score old_logp with the trainer before the update (the ratio is then
    # exactly 1 on the first mini-batch); False uses the sampler's log-probs.
    recompute_old_logp: bool = True
    nonfinite: str = "skip"
    # With nonfinite = "skip", a run stops once more than this many steps in a
    # row were skipped (golfjax/train/nonfinite.py).
    max_consecutive_skips: int = 10

    def __post_init__(self) -> None:
        losses.get_loss(self.loss)
        losses.get_off_policy_loss(self.off_policy_loss)
        advantages.get_advantage(self.advantage)
        if self.steps < 0:
            raise ValueError(f"steps={self.steps}; expected >= 0 (0: cold start only)")
        if self.max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips={self.max_consecutive_skips}; expected >= 0")
        for name in ("prompts_per_step", "micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")


@dataclasses.dataclass(frozen=True)
class ColdStartSection:
    """Supervised warm-up on the task's reference solutions (0 steps: none)."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    # Overrides of task.kwargs for the cold-start problems (e.g. easier ones).
    task_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Share of steps whose batch is in refinement format (failed attempts +
    # critiques -> the reference solution), so the policy can use feedback from
    # RL step 1. A batch is of one kind: plain prompts then keep their short
    # prompt bucket (golfjax/runner.py: Run.cold_start_step).
    refine_fraction: float = 0.0
    # Overrides of the cold-start task kwargs for the problems of the
    # refinement-format batches ({}: the cold-start problems). Problems the
    # policy cannot solve yet (for arith: longer sums) make those batches teach
    # the use of the feedback (copy the revealed answer) rather than the task.
    refine_task_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The first `refine_first_steps` steps are all refinement batches, the rest
    # follow refine_fraction: a feedback-first curriculum, so that the use of
    # the critique is learnt before the plain problems compete with it.
    refine_first_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.refine_fraction <= 1:
            raise ValueError(
                f"steps={self.steps}, batch_size={self.batch_size}, lr={self.lr},"
                f" refine_fraction={self.refine_fraction}; expected steps >= 0,"
                " batch_size >= 1, lr > 0, refine_fraction in [0, 1]"
            )
        # steps = 0 switches the cold start off, whatever the other keys say.
        if self.refine_first_steps < 0 or self.steps and self.refine_first_steps > self.steps:
            raise ValueError(
                f"refine_first_steps={self.refine_first_steps}; expected 0 to steps = {self.steps}")
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
    """GOLF's feedback loop; `enabled=False` is the GRPO baseline."""

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

    def __post_init__(self) -> None:
        choices = {
            "strategy": ("adaptive", "always", "hybrid"),
            "include": ("failed", "all"),
            "template": ("default", "compact"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}"
                )
        if self.n_inject < 1 or not 0 <= self.hybrid_prob <= 1:
            raise ValueError(
                f"n_inject={self.n_inject}, hybrid_prob={self.hybrid_prob};"
                " expected n_inject >= 1 and hybrid_prob in [0, 1]"
            )


@dataclasses.dataclass(frozen=True)
class VespoSection:
    """VESPO's training regimes (golfjax/loops/vespo.py); `enabled=False`: one update per rollout.

    The loop trains any `train.loss`; `train.recompute_old_logp` picks the
    behaviour log-probs (the trainer's rescoring of the rollout under the
    parameters that sampled it, or the sampler's own; `loss.tis` then corrects
    between the two). A mini-batch is `train.prompts_per_step` prompts and one
    optimizer step, so `train.steps` counts optimizer steps and a run samples
    `train.steps * train.prompts_per_step * sampling.group_size` responses
    whatever the staleness.
    """

    enabled: bool = False
    # N: mini-batches per rollout batch, trained once each in sequence, so
    # mini-batch j is trained by a policy j - 1 optimizer steps ahead of the
    # one that sampled it. `train.steps` must be a multiple of it.
    staleness: int = 1
    # A rollout worker thread samples with a parameter snapshot while the
    # learner trains (fully asynchronous).
    async_rollout: bool = False
    sync_every: int = 1  # K: learner steps between parameter snapshots (async).
    # Async: a rollout whose first mini-batch would be trained more than this
    # many learner steps after its sampling policy is dropped (and counted).
    # At least K - 1, or the learner could wait forever.
    max_staleness: int = 4
    queue_size: int = 2  # Async: finished rollouts the worker may hold ahead.
    # Async: the last `rollout_devices` devices sample and the others train;
    # 0 shares every device between the worker and the learner.
    rollout_devices: int = 0

    def __post_init__(self) -> None:
        checks = {
            "staleness": (self.staleness >= 1, ">= 1"),
            "sync_every": (self.sync_every >= 1, ">= 1"),
            "max_staleness": (
                self.max_staleness >= self.sync_every - 1,
                f">= sync_every - 1 = {self.sync_every - 1}",
            ),
            "queue_size": (self.queue_size >= 1, ">= 1"),
            "rollout_devices": (self.rollout_devices >= 0, ">= 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)}; expected {expected}")
        if self.rollout_devices and not self.async_rollout:
            raise ValueError(
                f"rollout_devices={self.rollout_devices} needs async_rollout=True"
                " (only the asynchronous worker samples on its own devices)"
            )


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation: mean accuracy and pass@k every `every` RL steps."""

    every: int = 10
    num_problems: int = 64
    samples: int = 4  # k of pass@k
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 10
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Mesh sizes for ("data", "fsdp", "tensor"); -1 takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


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
    vespo: VespoSection = VespoSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    mesh: MeshSection = MeshSection()


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Coerces a ConfigDict value to the annotated type, or raises naming `path`."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        return build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        non_none = [t for t in options if t is not type(None)]
        return _convert(value, non_none[0], path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}={value!r}; expected a sequence")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is not None and issubclass(origin, Mapping):
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}={value!r}; expected a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{path}={value!r}; expected {tp.__name__}")
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{path}={value!r}; expected int")
    return value


def build(cls: type, mapping: Any, path: str = "config") -> Any:
    """A `cls` dataclass from a (Config)dict; unknown or bad keys name `path`."""
    if hasattr(mapping, "to_dict"):
        mapping = mapping.to_dict()
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{path}={mapping!r}; expected a mapping of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(
            f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints[name], f"{path}.{name}") for name, value in mapping.items()
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def to_dict(config: Any) -> Any:
    """A JSON-able dict of a (nested) config dataclass, for checkpoints."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
