"""Adaptive injection of verified refinements into failing groups (GOLF step 5).

Specification: docs/algorithms.md#golf-injection. A group with fewer than
`ceil(success_threshold * G)` successes gets `k = min(n_inject, #wrong,
#correct refinements)` of its failed samples replaced by verified-correct
refinements, which keep the ORIGINAL prompt and whose tokens are marked
off-policy. Strategies: `adaptive` (default), `always` (every group), `hybrid`
(adaptive, plus any other group with probability `hybrid_prob`).

Host-side NumPy, in two steps the loop calls between scoring and advantages:

1. `plan_injection(success_BxG, refinement_success_BxG, ...)`: which sample of
   which group is replaced by which refinement (random choices from `rng`);
2. `apply_injection(plan, original, refinement, group_size=G)`: copies the chosen
   refinement rows' RESPONSE arrays (tokens, masks, behaviour log-probs, reward,
   decoded text...) over the replaced rows, and returns the off-policy token mask
   and the injected-row flags. Prompt arrays are not passed (and are refused): the
   injected row keeps its ORIGINAL prompt. Group ids are not touched: the injected
   row stays in its original group, and the refinement group, which keeps its own
   group id, is trained unchanged (the injected row is a copy).

Then advantages: `drgrpo(reward_N, group_id_N)` counts the injected row in its
group's mean (7 failures + 1 injected: +0.875 / -0.125), or with
`exclude_N=injected_N` the split-mean option. Metrics of the trained batch should
use the post-injection rewards (the released code's pre-injection metrics are a
known defect); report the on-policy success rate from the rewards before it.

Rows are prompt-major in both rollouts: row b*G + g is sample g of prompt b.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np

STRATEGIES = ("adaptive", "always", "hybrid")


@dataclasses.dataclass(frozen=True)
class Injection:
    """Sample `replaced_sample` of prompt `prompt_index`'s group is replaced by
    sample `refinement_sample` of the same prompt's refinement group."""

    prompt_index: int
    replaced_sample: int
    refinement_sample: int


@dataclasses.dataclass(frozen=True)
class Injected:
    """The result of `apply_injection`.

    Attributes:
      arrays: every array (or list) of `original`, with injected rows replaced.
      off_policy_mask_NxT: bool, the refinement's response mask on injected rows,
        False elsewhere.
      injected_N: bool, True at injected rows (`exclude_N` for split-mean).
    """

    arrays: dict[str, Any]
    off_policy_mask_NxT: np.ndarray
    injected_N: np.ndarray


def success_quota(success_threshold: float, group_size: int) -> int:
    """`ceil(success_threshold * G)`: a group with fewer successes qualifies.

    A small tolerance keeps float error from adding one (0.1 * 10 is
    1.0000000000000002, whose ceiling would be 2).
    """
    return math.ceil(success_threshold * group_size - 1e-9)


def rng_from_key(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX PRNG key (typed or raw uint32), so a loop
    can derive injection randomness from `fold_in(key, step)`."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).astype(np.uint32).ravel().tolist())


def _check_bool_BxG(name: str, x: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool [B, G] array, got {x.dtype} {x.shape}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}; expected {shape}")
    return x


def plan_injection(
        success_BxG: Any,
        refinement_success_BxG: Any,
        *,
        strategy: str = "adaptive",
        success_threshold: float,
        n_inject: int = 1,
        hybrid_prob: float = 0.3,
        rng: np.random.Generator,
        refinable_B: Any = None,
) -> list[Injection]:
    """Which failed samples to replace by which verified refinements.

    Args:
      success_BxG: the original samples' success (reward 1 under the task).
      refinement_success_BxG: the refinement samples' success, scored by the
        ORIGINAL task's verifier; only these (verified-correct) are injected.
      strategy: "adaptive" (successes < quota), "always" (every prompt), or
        "hybrid" (adaptive, or else with probability `hybrid_prob`).
      success_threshold: the task's threshold (math 0.125, instructions 0.25).
      n_inject: the most samples replaced per group.
      rng: the source of every random choice. Draws are made for every prompt,
        qualifying or not, so the plan of prompt b does not depend on the others.
      refinable_B: optional bool [B], False where the group had nothing to refine
        (its refinement group has reward 0 and is never injected).

    Returns:
      The injections, sorted by (prompt_index, replaced_sample).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown injection strategy {strategy!r}; expected one of {STRATEGIES}")
    if not 0.0 <= success_threshold <= 1.0:
        raise ValueError(f"success_threshold must be in [0, 1], got {success_threshold}")
    if n_inject < 0:
        raise ValueError(f"n_inject must be >= 0, got {n_inject}")
    if not 0.0 <= hybrid_prob <= 1.0:
        raise ValueError(f"hybrid_prob must be in [0, 1], got {hybrid_prob}")
    success = _check_bool_BxG("success_BxG", success_BxG, None)
    refined = _check_bool_BxG("refinement_success_BxG", refinement_success_BxG, success.shape)
    num_prompts, group_size = success.shape
    if refinable_B is not None:
        refinable = np.asarray(refinable_B, bool)
        if refinable.shape != (num_prompts,):
            raise ValueError(f"refinable_B has shape {refinable.shape}; expected ({num_prompts},)")
        refined = refined & refinable[:, None]

    adaptive_B = success.sum(axis=1) < success_quota(success_threshold, group_size)
    coin_B = rng.random(num_prompts) < hybrid_prob
    qualifies_B = {"adaptive": adaptive_B, "always": np.ones(num_prompts, bool),
                   "hybrid": adaptive_B | coin_B}[strategy]

    plan = []
    for b in range(num_prompts):
        wrong = np.flatnonzero(~success[b])
        good = np.flatnonzero(refined[b])
        # Permutations for every prompt keep the random stream aligned.
        wrong, good = rng.permutation(wrong), rng.permutation(good)
        if not qualifies_B[b]:
            continue
        k = min(n_inject, len(wrong), len(good))
        plan += [Injection(b, int(w), int(r)) for w, r in zip(wrong[:k], good[:k])]
    return sorted(plan, key=lambda x: (x.prompt_index, x.replaced_sample))


def apply_injection(
        injections: Sequence[Injection],
        original: Mapping[str, Any],
        refinement: Mapping[str, Any],
        *,
        group_size: int,
        response_mask_key: str = "response_mask_NxT",
) -> Injected:
    """Copies the planned refinement rows over the replaced original rows.

    Args:
      injections: from `plan_injection`.
      original: per-row response data of the original rollout, B*G rows each
        (NumPy arrays with rows first, or lists such as decoded texts), e.g.
        `tokens_NxT`, `response_mask_NxT`, `behaviour_logp_NxT`, `reward_N`.
      refinement: the same keys for the refinement rollout, same shapes.
      group_size: G.
      response_mask_key: the key of the response mask (gives the off-policy mask).

    Raises:
      ValueError: mismatched keys or shapes, a prompt array (a key starting with
        "prompt"), or an injection outside the batch.
    """
    if set(original) != set(refinement):
        raise ValueError(
            f"original and refinement must have the same keys, got {sorted(original)} and"
            f" {sorted(refinement)}")
    prompt_keys = [k for k in original if k.startswith("prompt")]
    if prompt_keys:
        raise ValueError(
            f"apply_injection got prompt arrays {prompt_keys}; an injected row keeps its"
            " ORIGINAL prompt, so pass only response data")
    if response_mask_key not in original:
        raise ValueError(f"missing {response_mask_key!r} (needed for the off-policy mask)")
    rows = len(original[response_mask_key])
    out: dict[str, Any] = {}
    for key, value in original.items():
        other = refinement[key]
        if isinstance(value, np.ndarray) or isinstance(other, np.ndarray):
            value, other = np.array(value), np.asarray(other)
            if value.shape != other.shape:
                raise ValueError(
                    f"{key}: original shape {value.shape} != refinement shape {other.shape}"
                    " (pad both rollouts to the same response length)")
        else:
            value, other = list(value), list(other)
        if len(value) != rows or len(other) != rows:
            raise ValueError(f"{key}: expected {rows} rows, got {len(value)} and {len(other)}")
        out[key] = value

    if rows % group_size:
        raise ValueError(f"{rows} rows is not a multiple of group_size={group_size}")
    off_policy = np.zeros(np.shape(original[response_mask_key]), bool)
    injected = np.zeros(rows, bool)
    for inj in injections:
        dst = inj.prompt_index * group_size + inj.replaced_sample
        src = inj.prompt_index * group_size + inj.refinement_sample
        if not (0 <= inj.replaced_sample < group_size and 0 <= inj.refinement_sample < group_size
                and 0 <= dst < rows):
            raise ValueError(f"{inj} is outside a batch of {rows} rows in groups of {group_size}")
        for key in out:
            out[key][dst] = refinement[key][src]
        off_policy[dst] = np.asarray(refinement[response_mask_key][src], bool)
        injected[dst] = True
    return Injected(out, off_policy, injected)
