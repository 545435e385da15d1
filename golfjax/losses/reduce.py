"""Loss aggregation as exact `(sum, count)` pairs.

Every loss in golfjax returns a `Weighted(sum, count)` rather than a scalar, so
that summing the pairs of several micro-batches, or of several devices, and
dividing once gives exactly the value the whole batch would have given. A mean of
per-micro-batch means would not: micro-batches hold different numbers of tokens.

Shapes: N rows (sequences), T padded response tokens.

Aggregation modes (names follow verl's `loss_agg_mode`):

| mode                      | sum                                  | count                     |
|---------------------------|--------------------------------------|---------------------------|
| `token-mean`              | sum_i sum_t m l                      | sum_i sum_t m             |
| `seq-mean-token-mean`     | sum_i (sum_t m l / sum_t m)          | #rows with a valid token  |
| `seq-mean-token-sum`      | sum_i sum_t m l                      | #rows with a valid token  |
| `seq-mean-token-sum-norm` | sum_i sum_t m l / T                  | #rows with a valid token  |

`seq-mean-token-sum-norm` is Dr.GRPO's constant normaliser (the padded length T
replaces the per-sequence length). Note: verl divides the batch *sum* by T without
the mean over sequences; golfjax keeps the mean over sequences that the name says,
which only rescales the loss by the (constant) number of rows.

Rows whose mask is all zero contribute nothing to any mode, and an all-masked
batch has value 0, never NaN.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import jax
import jax.numpy as jnp

TOKEN_MEAN: Final = "token-mean"
SEQ_MEAN_TOKEN_MEAN: Final = "seq-mean-token-mean"
SEQ_MEAN_TOKEN_SUM: Final = "seq-mean-token-sum"
SEQ_MEAN_TOKEN_SUM_NORM: Final = "seq-mean-token-sum-norm"
AGGREGATIONS: Final[tuple[str, ...]] = (
        TOKEN_MEAN,
        SEQ_MEAN_TOKEN_MEAN,
        SEQ_MEAN_TOKEN_SUM,
        SEQ_MEAN_TOKEN_SUM_NORM,
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Weighted:
    """A quantity kept as `(sum, count)` so that partial results add exactly.

    `a + b` adds both fields; `.value` divides once. A pytree, so it passes through
    `jit`, `scan` and `psum` unchanged.
    """

    sum: jax.Array
    count: jax.Array

    @property
    def value(self) -> jax.Array:
        """`sum / count`, and 0 (not NaN) when nothing was counted."""
        safe_count = jnp.where(self.count > 0, self.count, 1)
        return jnp.where(self.count > 0, self.sum / safe_count, 0.0)

    def __add__(self, other: Weighted) -> Weighted:
        return Weighted(self.sum + other.sum, self.count + other.count)

    @classmethod
    def zero(cls, dtype: jnp.dtype = jnp.float32) -> Weighted:
        return cls(jnp.zeros((), dtype), jnp.zeros((), dtype))


# `LossConfig.agg`'s default, "the loss's own aggregation": a name for a
# config, resolved by `LossConfig.for_loss` before anything is aggregated.
LOSS_DEFAULT_AGG: Final = "loss-default"


def check_aggregation(agg: str, also: str | None = None) -> None:
    """Raises ValueError unless `agg` is one of `AGGREGATIONS` (or `also`)."""
    if agg == also:
        return
    if agg == LOSS_DEFAULT_AGG:
        raise ValueError(
                f"agg={agg!r} names the loss's default; resolve it with"
                " LossConfig.for_loss(loss name) before aggregating"
        )
    if agg not in AGGREGATIONS:
        expected = ", ".join(AGGREGATIONS + ((also,) if also else ()))
        raise ValueError(
                f"agg={agg!r} is not an aggregation mode; expected one of {expected}"
        )


def aggregate(loss_NxT: jax.Array, mask_NxT: jax.Array, agg: str) -> Weighted:
    """Aggregates a per-token loss over valid tokens into a `Weighted` pair.

    Args:
        loss_NxT: per-token loss. Values at masked positions are ignored (selected
            away, so a NaN or inf there cannot leak into the sum or its gradient).
        mask_NxT: 1 (or True) at valid tokens, 0 elsewhere.
        agg: one of `AGGREGATIONS` (see the module docstring for the formulas).

    Returns:
        `Weighted(sum, count)` in the dtype of `loss_NxT`.
    """
    check_aggregation(agg)
    if loss_NxT.ndim != 2 or loss_NxT.shape != mask_NxT.shape:
        raise ValueError(
                f"loss_NxT has shape {loss_NxT.shape} and mask_NxT {mask_NxT.shape};"
                " expected two equal [N, T] shapes"
        )
    dtype = loss_NxT.dtype
    valid_NxT = mask_NxT.astype(bool)
    masked_NxT = jnp.where(valid_NxT, loss_NxT, jnp.zeros((), dtype))
    tokens_N = valid_NxT.sum(axis=-1).astype(dtype)
    if agg == TOKEN_MEAN:
        return Weighted(masked_NxT.sum(), tokens_N.sum())

    row_sum_N = masked_NxT.sum(axis=-1)
    has_tokens_N = tokens_N > 0
    if agg == SEQ_MEAN_TOKEN_MEAN:
        per_row_N = row_sum_N / jnp.where(has_tokens_N, tokens_N, 1)
    elif agg == SEQ_MEAN_TOKEN_SUM:
        per_row_N = row_sum_N
    else:  # SEQ_MEAN_TOKEN_SUM_NORM: Dr.GRPO's constant, the padded length.
        per_row_N = row_sum_N / loss_NxT.shape[-1]
    return Weighted(per_row_N.sum(), has_tokens_N.sum().astype(dtype))


def weighted_mean(x: jax.Array, mask: jax.Array) -> Weighted:
    """The mean of `x` over `mask` as a `(sum, count)` pair.

    A loss's diagnostics are such pairs: the train step adds them over
    micro-batches and batch parts and divides once, so each diagnostic is the
    mean over everything it measures in the whole batch (a part or micro-batch
    without such elements adds nothing).
    """
    valid = mask.astype(bool)
    x = jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32))
    total = jnp.where(valid, x, 0).sum()
    return Weighted(total, valid.sum().astype(total.dtype))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over `mask`, 0 when the mask is empty; for diagnostics."""
    return weighted_mean(x, mask).value
