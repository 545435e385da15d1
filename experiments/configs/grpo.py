"""GRPO baseline: the GOLF config with feedback switched off, on equal terms.

    python -m experiments.main --config=experiments/configs/grpo.py:arith --workdir=/tmp/grpo

Same model, cold start, sampling, optimizer and loss as golf.py; only the
critique/refinement/injection loop is off. Variants as in golf.py.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.feedback_config(arg, golf=False)


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
    return common.seed_sweep(arg, common.TASK_VARIANTS)
