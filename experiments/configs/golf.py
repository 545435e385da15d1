"""GOLF: group-level natural-language feedback on the built-in tasks.

    python -m experiments.main --config=experiments/configs/golf.py:arith --workdir=/tmp/golf

Variants: `arith` (the project's demo: `make demo`), `constraints`, `math`
(needs a local checkpoint and dataset for real runs, see common.py), and
`smoke` (two steps of each phase on the tiny model, mostly compilation).
`arith`: a 450-step cold start (the answer format on 1-digit sums that do not
carry, the copy of a revealed answer on longer ones), then 30 GOLF steps on the
1-digit sums that carry (common.task_config); its measured learning curves
are in docs/results.md.
Options after the variant: `seed=S` (common.parse_variant).
The GRPO baseline on equal terms is experiments/configs/grpo.py.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.feedback_config(arg, golf=True)


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
    return common.seed_sweep(arg, common.TASK_VARIANTS)
