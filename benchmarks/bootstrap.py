"""The percentile bootstrap the benchmarks' intervals share.

A benchmark's unit of replication is a seed: each draw resamples the seeds of
the numerator and of the denominator with replacement, independently, and
takes the ratio of their means.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def ratio_of_means(numerator: np.ndarray, denominator: np.ndarray, draws: int,
                   rng: np.random.Generator) -> dict[str, Any]:
    """`mean(numerator) / mean(denominator)` and its 95% percentile interval.

    Each of `draws` draws resamples both arrays (numerator first) with `rng`;
    a draw whose denominator mean is not positive has no ratio and is counted
    in `draws_without_ratio`.

    Returns:
      {"ratio": the ratio of the observed means (None if the denominator's
      mean is not positive), "ci95": [low, high] (None, None without any
      valid draw), "draws", "draws_without_ratio"}.
    """
    numerator, denominator = np.asarray(numerator), np.asarray(denominator)
    means_n = numerator[rng.integers(0, len(numerator), size=(draws, len(numerator)))].mean(axis=1)
    means_d = denominator[rng.integers(0, len(denominator), size=(draws, len(denominator)))].mean(axis=1)
    valid = means_d > 0
    ratios = means_n[valid] / means_d[valid]
    return {
        "ratio": float(numerator.mean() / denominator.mean()) if denominator.mean() > 0 else None,
        "ci95": np.percentile(ratios, [2.5, 97.5]).tolist() if ratios.size else [None, None],
        "draws": draws,
        "draws_without_ratio": int(draws - valid.sum()),
    }
