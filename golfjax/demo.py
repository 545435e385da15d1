"""`make demo`: the project's main job.

The demo is GOLF on the built-in `arith` task (`experiments/configs/golf.py:arith`).
Until the training loop lands, this prints what golfjax provides today and exits
with status 2 and a message saying what is missing.
"""

from __future__ import annotations

import sys


def main() -> int:
    from golfjax import advantages
    from golfjax import losses

    print("golfjax: GOLF and VESPO for language models, in JAX.\n")
    print("Available now:")
    print(f"  policy losses     : {', '.join(losses.LOSSES)}")
    print(f"  off-policy (GOLF) : {', '.join(losses.OFF_POLICY_LOSSES)}")
    print(f"  aggregations      : {', '.join(losses.AGGREGATIONS)}")
    print(f"  advantages        : {', '.join(advantages.ADVANTAGES)}")
    print(
        "\nThe demo run (GOLF on `arith`: python -m experiments.main"
        " --config=experiments/configs/golf.py:arith) needs the training loop,"
        " which is not built yet.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
