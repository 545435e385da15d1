"""The non-finite policy of a run, on the host, for every phase's steps.

The train step never applies an update whose loss or gradient is not finite,
or that would make a parameter or an optimizer moment non-finite: it keeps the
parameters and the optimizer state, and reports `train/skipped_nonfinite = 1`
(golfjax/train/step.py). So no checkpoint holds a non-finite state. `NonfiniteGuard` decides what the run does next:

- `raise`: stop at the first skipped step;
- `skip`: go on, unless more than `max_consecutive_skips` steps in a row were
  skipped. A run whose every step skips has diverged (or restored a damaged
  state); logging `nan` to the end would only hide it.

The count of consecutive skips is part of the run's state (golfjax/train_loop.py
saves it with the data position), so a resume neither forgets nor restarts it.
"""

from __future__ import annotations

from typing import Any, Mapping

from golfjax.config import NONFINITE_MODES as POLICIES

SKIPPED = "train/skipped_nonfinite"


class NonfiniteGuard:
    """Checks each step's metrics; raises `FloatingPointError` to stop the run."""

    def __init__(self, policy: str, max_consecutive_skips: int, streak: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"train.nonfinite={policy!r}; expected one of {', '.join(POLICIES)}")
        if max_consecutive_skips < 0:
            raise ValueError(f"train.max_consecutive_skips={max_consecutive_skips}; expected >= 0")
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.streak = streak  # Steps skipped in a row, up to the last checked one.

    def check(self, step: int, metrics: Mapping[str, Any], phase: str = "train") -> None:
        """Updates the streak with `step`'s metrics (no `SKIPPED` key: not skipped).

        Raises:
          FloatingPointError: the policy says stop, naming the step(s), the
            loss and the gradient norm, and the setting that decided it.
        """
        if not float(metrics.get(SKIPPED, 0.0)) > 0:
            self.streak = 0
            return
        self.streak += 1
        values = f"loss={metrics.get('loss', metrics.get('cold_start/nll'))}, grad_norm={metrics.get('grad_norm')}"
        if self.policy == "raise":
            raise FloatingPointError(
                f"{phase} step {step}: non-finite loss, gradient or update ({values}); the update was not"
                " applied and train.nonfinite = 'raise' stops the run")
        if self.streak > self.max_consecutive_skips:
            first = step - self.streak + 1
            raise FloatingPointError(
                f"{phase} steps {first} to {step}: {self.streak} consecutive steps had a non-finite"
                f" loss, gradient or update and were skipped ({values} at step {step}), more than"
                f" train.max_consecutive_skips = {self.max_consecutive_skips}; the run has diverged")
