"""GOLF: group-level natural-language feedback on the built-in tasks.

    python -m experiments.main --config=experiments/configs/golf.py:arith --workdir=/tmp/golf

Variants: `arith` (the project's demo: `make demo`), `constraints`, `math`
(needs a local checkpoint and dataset for real runs, see common.py), and
`smoke` (two steps of each phase on the tiny model; seconds on CPU).
`arith` on a 2-core CPU: cold start then 40 GOLF steps, about 5 minutes;
held-out accuracy on 3-digit sums rises from ~0 as refinements are injected.
The GRPO baseline on equal terms is experiments/configs/grpo.py.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.feedback_config(arg, golf=True)


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
    del arg
    return common.seed_sweep()
