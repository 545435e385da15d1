"""`OptimizerConfig`: the optimizer a run trains with (golfjax/train/state.py builds it).

Its own module, below golfjax/config.py and the train step: the run's config
holds one, and `make_optimizer` reads it; it reads neither.
"""

from __future__ import annotations

import dataclasses
import math

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and global-norm clipping (GOLF's released defaults).

    Attributes:
      lr: peak learning rate.
      warmup_steps: linear warmup from 0 to `lr` over the first updates.
      schedule: "constant" after warmup, or "cosine" decay to
        `lr * min_lr_ratio` at the last of `total_steps` updates.
      total_steps: the updates the schedule spans; 0 (the default) in a run's
        config, where the run sets it to its own steps (`RunConfig.rl_optimizer`,
        `cold_start_optimizer`), and a run refuses any other value that differs
        from them. The cosine schedule needs it resolved (>= 1).
      min_lr_ratio: the cosine schedule's final fraction of `lr`.
      b1, b2, eps: Adam's moment decays and epsilon.
      weight_decay: decoupled weight decay; norm scales and biases never decay.
      grad_clip: global-norm clipping threshold; None disables it.
    """

    lr: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int = 0
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"OptimizerConfig.schedule={self.schedule!r}; expected one of"
                f" {', '.join(SCHEDULES)}"
            )
        checks = {
            "lr": (0 < self.lr < math.inf, "a finite number > 0"),
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "total_steps": (self.total_steps >= 0, ">= 0 (0: the run's steps)"),
            "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "b1": (0 <= self.b1 < 1, "in [0, 1)"),
            "b2": (0 <= self.b2 < 1, "in [0, 1)"),
            "eps": (self.eps > 0, "> 0"),
            "weight_decay": (0 <= self.weight_decay < math.inf, "a finite number >= 0"),
            "grad_clip": (self.grad_clip is None or 0 < self.grad_clip < math.inf, "a finite number > 0 or None"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f"OptimizerConfig.{name}={getattr(self, name)!r}; expected {expected}"
                )
