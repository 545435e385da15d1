"""Group-relative advantages: GRPO, Dr.GRPO, RLOO.

Shapes: N rows (samples). Each row belongs to the group named by an integer id;
groups need not be contiguous or of equal size, so one batch can hold original
groups and GOLF refinement groups side by side.

For a row i in group g with rewards r_g (baseline statistics over the group's
*counted* rows, see `exclude_N` below):

- `grpo`:   A_i = (r_i - mean_g) / (std_g + eps)   (Shao et al. 2024)
- `drgrpo`: A_i = r_i - mean_g                     (Liu et al. 2025, "Dr. GRPO")
- `rloo`:   A_i = r_i - mean_{j != i} r_j          (Ahmadian et al. 2024)

`std_g` is the unbiased (n-1) standard deviation, as in GRPO's reference
implementations (TRL, verl). A row whose baseline is undefined gets advantage
0: its group has no counted row, or (GRPO) fewer than two, whose std is
undefined, or (RLOO) no counted row other than itself. A lone sample carries no
group-relative signal.

`exclude_N` implements GOLF's split-mean option: rows flagged (injected
refinements) still receive an advantage, but are left out of their group's
baseline statistics. With 7 failures and 1 injected success, `drgrpo` gives the
success +0.875 and each failure -0.125 without exclusion (the injected sample
counts in the mean), and +1 / 0 with it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AdvantageFn = Callable[..., jax.Array]


def _check(reward_N: jax.Array, group_id_N: jax.Array,
           exclude_N: jax.Array | None) -> None:
    if jnp.ndim(reward_N) != 1:
        raise ValueError(
            f"reward_N has shape {jnp.shape(reward_N)}; expected a 1-D [N] array"
        )
    (n,) = jnp.shape(reward_N)
    if jnp.shape(group_id_N) != (n,):
        raise ValueError(
            f"group_id_N has shape {jnp.shape(group_id_N)}; expected ({n},) to"
            " match reward_N"
        )
    if not jnp.issubdtype(jnp.result_type(group_id_N), jnp.integer):
        raise ValueError(
            f"group_id_N has dtype {jnp.result_type(group_id_N)}; expected an"
            " integer dtype"
        )
    if exclude_N is not None and jnp.shape(exclude_N) != (n,):
        raise ValueError(
            f"exclude_N has shape {jnp.shape(exclude_N)}; expected ({n},) to"
            " match reward_N"
        )


def _prepare(
    reward_N: jax.Array, group_id_N: jax.Array, exclude_N: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Checks shapes; returns (float rewards, dense segment ids, counted mask).

    Arbitrary ids are mapped to dense segments with a fixed-size `unique`, so
    grouping is O(N log N) and jit-compatible.
    """
    _check(reward_N, group_id_N, exclude_N)
    n = jnp.shape(reward_N)[0]
    dtype = jnp.promote_types(jnp.result_type(reward_N), jnp.float32)
    reward_N = jax.lax.stop_gradient(jnp.asarray(reward_N, dtype))
    _, segment_N = jnp.unique(
        jnp.asarray(group_id_N), return_inverse=True, size=n, fill_value=0
    )
    if exclude_N is None:
        counted_N = jnp.ones((n,), bool)
    else:
        counted_N = ~jnp.asarray(exclude_N).astype(bool)
    return reward_N, segment_N.reshape(n), counted_N


def _group_sum(values_N: jax.Array, segment_N: jax.Array) -> jax.Array:
    """The sum of `values_N` over each row's group, broadcast back to rows."""
    n = values_N.shape[0]
    return jax.ops.segment_sum(values_N, segment_N, num_segments=n)[segment_N]


def _group_mean(
    reward_N: jax.Array, segment_N: jax.Array, counted_N: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(mean over the group's counted rows, number of counted rows), per row."""
    count_N = _group_sum(counted_N.astype(reward_N.dtype), segment_N)
    total_N = _group_sum(jnp.where(counted_N, reward_N, 0.0), segment_N)
    return total_N / jnp.maximum(count_N, 1.0), count_N


def drgrpo(
    reward_N: jax.Array,
    group_id_N: jax.Array,
    exclude_N: jax.Array | None = None,
) -> jax.Array:
    """Dr. GRPO: `A_i = r_i - mean_g`, no std division (GOLF's default)."""
    reward_N, segment_N, counted_N = _prepare(reward_N, group_id_N, exclude_N)
    mean_N, count_N = _group_mean(reward_N, segment_N, counted_N)
    return jnp.where(count_N >= 1, reward_N - mean_N, 0.0)


def grpo(
    reward_N: jax.Array,
    group_id_N: jax.Array,
    exclude_N: jax.Array | None = None,
    eps: float = 1e-6,
) -> jax.Array:
    """GRPO: `A_i = (r_i - mean_g) / (std_g + eps)`, unbiased std."""
    reward_N, segment_N, counted_N = _prepare(reward_N, group_id_N, exclude_N)
    mean_N, count_N = _group_mean(reward_N, segment_N, counted_N)
    # Two passes (deviations, then their squares): a one-pass sum of squares
    # cancels catastrophically when rewards are large and their spread small.
    deviation_N = reward_N - mean_N
    sq_dev_N = _group_sum(jnp.where(counted_N, deviation_N**2, 0.0), segment_N)
    has_std_N = count_N >= 2
    std_N = jnp.sqrt(sq_dev_N / jnp.where(has_std_N, count_N - 1.0, 1.0))
    return jnp.where(has_std_N, deviation_N / (std_N + eps), 0.0)


def rloo(
    reward_N: jax.Array,
    group_id_N: jax.Array,
    exclude_N: jax.Array | None = None,
) -> jax.Array:
    """RLOO: `A_i = r_i - mean_{j != i} r_j` over the group's counted rows."""
    reward_N, segment_N, counted_N = _prepare(reward_N, group_id_N, exclude_N)
    counted_r_N = jnp.where(counted_N, reward_N, 0.0)
    count_N = _group_sum(counted_N.astype(reward_N.dtype), segment_N)
    # Row i leaves itself out of the baseline only if it was counted in it.
    others_N = count_N - counted_N.astype(reward_N.dtype)
    others_sum_N = _group_sum(counted_r_N, segment_N) - counted_r_N
    baseline_N = others_sum_N / jnp.maximum(others_N, 1.0)
    return jnp.where(others_N >= 1, reward_N - baseline_N, 0.0)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo,
    "drgrpo": drgrpo,
    "rloo": rloo,
}


def get_advantage(name: str) -> AdvantageFn:
    """`ADVANTAGES[name]`, or a ValueError listing the known names."""
    if name not in ADVANTAGES:
        raise ValueError(
            f"unknown advantage {name!r}; expected one of"
            f" {', '.join(sorted(ADVANTAGES))}"
        )
    return ADVANTAGES[name]
