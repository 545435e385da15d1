"""The train step: one pure function, jitted in exactly one place (`Trainer`).

Letters (golfjax/types.py): N rows, M micro-batches, P prompt tokens, T response tokens.

`train_step(state, batch, key) -> (state, metrics)` runs, for each of M
micro-batches, the forward pass once over `[prompt; response]`, the chunked
per-token log-probs (golfjax/train/logprobs.py), and the objective

    L = (policy.sum + off_policy.sum) / (C_policy + C_off_policy)
        + kl_coef * kl.sum / C_kl - entropy_coef * entropy.sum / C_entropy

where `policy` is `LOSSES[cfg.loss]` on on-policy response tokens,
`off_policy` is `OFF_POLICY_LOSSES[cfg.off_policy_loss]` on GOLF's injected
tokens, `kl` the estimator `train.kl_estimator` of the KL to the reference
policy (golfjax/losses/kl.py; with `train.kl_in = "loss"`, else it is in the
rewards), and each `C` is the *whole batch's* count of that term. The counts
depend only on masks (and on old/sampler log-probs for MIS), never on the
parameters, so they are computed once up front; each micro-batch then adds
`grad(sum_m / C)` and the accumulated gradient is exactly the full-batch
gradient, whatever M and whatever the aggregation mode.

A batch may also come as a tuple of parts that differ only in their prompt
length P (GOLF: the original rows' short prompts and the refinement rows' long
ones). Every part is split into M micro-batches and the counts are the sum of
the parts' counts, so the gradient is the one of the parts concatenated along
the rows with their prompts padded to one length, without the padding's compute.

GOLF's gradient diagnostics (`cfg.grad_shares`, batches of parts only): the
gradient of the off-policy term and each part's on-policy gradient are
accumulated apart, so that their norms and shares of the update are measured
in the step itself. A micro-batch with injected tokens takes a second backward
pass for it (one `jax.vjp`, two cotangents); one without takes none. The cost
in memory is one gradient buffer per part, and one for the off-policy term.

The loss functions' diagnostics are `Weighted` (sum, count) pairs too: they
are added over micro-batches and parts and divided once, so each is the mean
over everything it measures in the whole batch (`loss/offpolicy_prob_mean`
over the injected tokens, wherever they are).

Off-policy statistics (`weight_sums`, `weight_stats`), for every loss and
schedule: the sequence weight `W_i = pi(y_i) / mu(y_i)` of each row with
on-policy response tokens, from the log-probs the step computes anyway (the
policy about to be updated) and `old_logp` (the behaviour policy): the mean of
`log W` (all rows and by advantage sign), its largest magnitude and the
normalised ESS, `schedule/log_w_*` and `schedule/ess`. Sums add, the maximum is
a maximum, and the ESS's sums of `W` and `W^2` are kept relative to the
largest `log W` seen so far, so the values are the whole batch's whatever M and
the parts. On-policy with `old_logp` rescored by the same parameters, `log W`
is 0 up to the two programs' rounding.

Nothing non-finite reaches the train state: an update is skipped (parameters
and optimizer state kept) when the loss or the gradient is not finite, or when
applying it would make a parameter or an optimizer moment non-finite (e.g. a
huge learning rate); `train/skipped_nonfinite` is then 1, and the run's
`NonfiniteGuard` (golfjax/train/nonfinite.py) decides on the host whether to
go on. The second check evaluates the optimizer's arithmetic once more,
reduced to one flag before the update is applied: a second pass over the
parameters, gradients and moments, but no second copy of the state (XLA's
memory analysis of the compiled step shows the same temporary bytes with and
without it), so the donated state is still updated in place. `optimizer/lr` is
the learning rate the step's update takes (or would have taken).

An MoE policy's forward pass replays the rollout's routes when configured,
reports the route-mismatch metrics of a batch with recorded routes
(golfjax/train/routing.py), and with `moe_aux_loss_coef > 0` adds
transformers' load-balancing loss of each forward pass (one per micro-batch
and part, as transformers computes it per forward) times the coefficient,
averaged over them (`loss/moe_aux`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from golfjax import losses as losses_lib
from golfjax import sharding as sharding_lib
from golfjax.config import TrainSection
from golfjax.losses import LossConfig
from golfjax.losses import importance
from golfjax.losses import kl as kl_lib
from golfjax.losses import reduce
from golfjax.models import moe as moe_lib
from golfjax.models import transformer
from golfjax.models.config import ModelConfig
from golfjax.train import logprobs as logprobs_lib
from golfjax.train import routing as routing_lib
from golfjax.train.state import TrainState
from golfjax.train.state import schedule_count
from golfjax.types import Batch

def compute_logprobs(params: Any, batch: Batch, **kwargs: Any
                     ) -> tuple[jax.Array, jax.Array | None]:
    """Per-token log-probs (and entropies) of `batch`'s responses, `N x T`
    (`compute_logprobs_routed`'s, whose keyword arguments it takes)."""
    return compute_logprobs_routed(params, batch, **kwargs)[:2]


def compute_logprobs_routed(
    params: Any,
    batch: Batch,
    *,
    model_config: ModelConfig,
    temperature: float = 1.0,
    chunk: int = 128,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None, moe_lib.Routing | None]:
    """Per-token log-probs (and entropies) of `batch`'s responses, `N x T`, and
    an MoE policy's routing over [prompt; response] (replaying the batch's
    routes when configured: golfjax/train/routing.py)."""
    prompt_len = batch.prompt_tokens_NxP.shape[1]
    tokens_NxS = jnp.concatenate([batch.prompt_tokens_NxP, batch.tokens_NxT], axis=1)
    # Every response slot is visible: right padding only ever follows the end.
    mask_NxS = jnp.concatenate(
        [batch.prompt_mask_NxP, jnp.ones_like(batch.response_mask_NxT)], axis=1
    )
    positions_NxS = jnp.maximum(jnp.cumsum(mask_NxS.astype(jnp.int32), axis=1) - 1, 0)
    h_NxSxD, _, routing = transformer.hidden_routed(
        params, tokens_NxS, positions_NxS, mask_NxS, config=model_config,
        token_mask_NxQ=routing_lib.token_mask(batch),
        replay=routing_lib.replay(batch, model_config),
    )
    h_NxTxD = logprobs_lib.response_hidden(h_NxSxD, prompt_len)
    logp_NxT, entropy_NxT = logprobs_lib.token_logprobs(
        h_NxTxD,
        batch.tokens_NxT,
        functools.partial(transformer.unembed, params, config=model_config),
        temperature=temperature,
        chunk=chunk,
        with_entropy=with_entropy,
    )
    return logp_NxT, entropy_NxT, routing


def _masks(batch: Batch) -> tuple[jax.Array, jax.Array]:
    on_NxT = batch.response_mask_NxT & ~batch.off_policy_mask_NxT
    off_NxT = batch.response_mask_NxT & batch.off_policy_mask_NxT
    return on_NxT, off_NxT


def uses_sampler_logp(loss_cfg: LossConfig) -> bool:
    """Whether the loss reads the sampler's log-probs as `sampler_logp` (TIS and
    MIS correct between them and `old_logp`, the trainer's recomputation)."""
    return loss_cfg.tis or loss_cfg.mis != "none"


def _checked_aux(name: str, aux: dict[str, Any]) -> dict[str, reduce.Weighted]:
    for key, value in aux.items():
        if not isinstance(value, reduce.Weighted):
            raise TypeError(
                f"loss {name!r} returned diagnostic {key!r} as {type(value).__name__}; expected a"
                " losses.Weighted (sum, count) pair, e.g. reduce.weighted_mean(x, mask)")
    return aux


def _policy_terms(
    logp_NxT: jax.Array, batch: Batch, cfg: TrainSection, loss_cfg: LossConfig
) -> tuple[reduce.Weighted, reduce.Weighted, dict[str, reduce.Weighted]]:
    """(on-policy loss, off-policy loss, aux) of one (micro-)batch."""
    on_NxT, off_NxT = _masks(batch)
    sampler = batch.behaviour_logp_NxT if uses_sampler_logp(loss_cfg) else None
    policy, aux = losses_lib.LOSSES[cfg.loss](
        logp_NxT, batch.old_logp_NxT, batch.advantage_N, on_NxT, loss_cfg, sampler
    )
    # An injected row's behaviour is the refinement rollout: its sampler
    # log-probs are those under the refinement prompt.
    off_policy, off_aux = losses_lib.OFF_POLICY_LOSSES[cfg.off_policy_loss](
        logp_NxT, batch.behaviour_logp_NxT, batch.advantage_N, off_NxT, loss_cfg
    )
    return policy, off_policy, _checked_aux(cfg.loss, aux) | _checked_aux(cfg.off_policy_loss, off_aux)


def term_counts(batch: Batch, cfg: TrainSection, loss_cfg: LossConfig) -> dict[str, jax.Array]:
    """The whole batch's count of each objective term (parameter-independent)."""
    old = batch.old_logp_NxT
    policy, off_policy, _ = _policy_terms(old, batch, cfg, loss_cfg)
    agg_count = reduce.aggregate(jnp.zeros_like(old), batch.response_mask_NxT, loss_cfg.agg)
    return {"policy": policy.count + off_policy.count, "response": agg_count.count,
            **routing_lib.route_counts(batch)}


def _safe_div(x: jax.Array, count: jax.Array) -> jax.Array:
    return jnp.where(count > 0, x / jnp.where(count > 0, count, 1.0), 0.0)


def weight_sums(logp_NxT: jax.Array, batch: Batch, clip: float) -> dict[str, jax.Array]:
    """One (micro-)batch's sums for the off-policy statistics (`weight_stats`).

    `s_i = log W_i`, `W_i = pi(y_i) / mu(y_i)` of each row with an on-policy
    response token: `logp` (the policy about to be updated) against `old_logp`
    (the behaviour policy), as `importance.sequence_log_weight` clips it
    (without TIS). `w_sum` and `w_sq_sum` are `sum exp(s - shift)` and
    `sum exp(2 (s - shift))` with `shift` the largest `s` (-inf without rows),
    so that they add over micro-batches without overflow (`combine_weight_sums`).
    """
    on_NxT, _ = _masks(batch)
    s_N = jax.lax.stop_gradient(importance.sequence_log_weight(logp_NxT, batch.old_logp_NxT, on_NxT, clip))
    rows_N = on_NxT.any(axis=-1)
    pos_N = rows_N & (batch.advantage_N >= 0)
    neg_N = rows_N & ~pos_N

    def total(x_N: jax.Array, where_N: jax.Array) -> jax.Array:
        return jnp.where(where_N, x_N, 0.0).sum().astype(jnp.float32)

    shift = jnp.max(jnp.where(rows_N, s_N, -jnp.inf)).astype(jnp.float32)
    w_N = jnp.where(rows_N, jnp.exp(s_N - jnp.where(jnp.isfinite(shift), shift, 0.0)), 0.0)
    return {
        "rows": total(jnp.ones_like(s_N), rows_N), "log_w": total(s_N, rows_N),
        "pos_rows": total(jnp.ones_like(s_N), pos_N), "log_w_pos": total(s_N, pos_N),
        "neg_rows": total(jnp.ones_like(s_N), neg_N), "log_w_neg": total(s_N, neg_N),
        "abs_max": jnp.max(jnp.where(rows_N, jnp.abs(s_N), 0.0)).astype(jnp.float32),
        "shift": shift, "w_sum": total(w_N, rows_N), "w_sq_sum": total(w_N**2, rows_N),
    }


def combine_weight_sums(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`weight_sums` of two sets of rows -> those of their union (sums add, the
    maximum is a maximum, the shifted exponential sums are rescaled to the
    larger shift)."""
    out = {k: a[k] + b[k] for k in ("rows", "log_w", "pos_rows", "log_w_pos", "neg_rows", "log_w_neg")}
    out["abs_max"] = jnp.maximum(a["abs_max"], b["abs_max"])
    shift = jnp.maximum(a["shift"], b["shift"])

    def rescale(x: dict[str, jax.Array], power: float) -> jax.Array:
        # A side without rows (shift -inf) holds zeros: keep them, not NaN.
        return jnp.where(jnp.isfinite(x["shift"]), jnp.exp(power * (x["shift"] - shift)), 0.0)

    out["shift"] = shift
    out["w_sum"] = a["w_sum"] * rescale(a, 1.0) + b["w_sum"] * rescale(b, 1.0)
    out["w_sq_sum"] = a["w_sq_sum"] * rescale(a, 2.0) + b["w_sq_sum"] * rescale(b, 2.0)
    return out


def weight_stats(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The whole batch's off-policy statistics from its `weight_sums`: the mean
    of `log W` (all rows, rows with `A >= 0`, rows with `A < 0`), its largest
    magnitude, and the normalised ESS `(sum W)^2 / (n sum W^2)` in (0, 1]
    (0 without rows)."""
    n = sums["rows"]
    ess = _safe_div(sums["w_sum"] ** 2, n * sums["w_sq_sum"])
    return {
        "schedule/log_w_mean": _safe_div(sums["log_w"], n),
        "schedule/log_w_pos_mean": _safe_div(sums["log_w_pos"], sums["pos_rows"]),
        "schedule/log_w_neg_mean": _safe_div(sums["log_w_neg"], sums["neg_rows"]),
        "schedule/log_w_abs_max": sums["abs_max"],
        "schedule/ess": ess,
    }


def _micro_objective(
    params: Any,
    batch: Batch,
    counts: dict[str, jax.Array],
    model_config: ModelConfig,
    cfg: TrainSection,
    loss_cfg: LossConfig,
    temperature: float,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, reduce.Weighted], jax.Array,
                             dict[str, jax.Array]]]:
    """This micro-batch's share of the full-batch objective.

    Returns `(objective, (shares, diagnostics, off_policy, weights))`:
    `shares` are this micro-batch's exact parts of full-batch quantities (they
    add up over micro-batches); `diagnostics` are the loss functions'
    `Weighted` pairs (they add up too); `off_policy` is the off-policy term's
    part of `objective` (`_split_objective`); `weights` its `weight_sums`.
    """
    logp_NxT, entropy_NxT, routing = compute_logprobs_routed(
        params, batch, model_config=model_config, temperature=temperature,
        chunk=cfg.logp_chunk, with_entropy=True,
    )
    policy, off_policy, diagnostics = _policy_terms(logp_NxT, batch, cfg, loss_cfg)
    agg = loss_cfg.agg
    response_NxT = batch.response_mask_NxT
    shares = {"loss/policy": _safe_div(policy.sum + off_policy.sum, counts["policy"])}
    objective = shares["loss/policy"]
    if cfg.kl_coef > 0 and cfg.kl_in == "loss":
        kl_NxT = kl_lib.kl_penalty(logp_NxT, batch.ref_logp_NxT, cfg.kl_estimator)
        shares["loss/kl"] = _safe_div(reduce.aggregate(kl_NxT, response_NxT, agg).sum, counts["response"])
        objective = objective + cfg.kl_coef * shares["loss/kl"]
    shares["entropy"] = _safe_div(reduce.aggregate(entropy_NxT, response_NxT, agg).sum, counts["response"])
    if cfg.entropy_coef > 0:
        objective = objective - cfg.entropy_coef * shares["entropy"]
    else:  # Reported only: keep it out of the backward pass.
        shares["entropy"] = jax.lax.stop_gradient(shares["entropy"])
    if routing is not None and cfg.moe_aux_loss_coef > 0:
        shares["loss/moe_aux"] = moe_lib.load_balancing_loss(routing, model_config) / counts["forwards"]
        objective = objective + cfg.moe_aux_loss_coef * shares["loss/moe_aux"]
    if routing is not None and batch.routes_NxTxLxA is not None:
        for name, value in routing_lib.mismatch_sums(routing, batch).items():
            shares[routing_lib.METRICS[name]] = jax.lax.stop_gradient(_safe_div(value, counts[name]))
    diagnostics = {f"loss/{name}": value for name, value in diagnostics.items()}
    weights = weight_sums(logp_NxT, batch, loss_cfg.log_ratio_clip)
    return objective, (shares, diagnostics, _safe_div(off_policy.sum, counts["policy"]), weights)


def _split_objective(*args: Any) -> tuple[jax.Array, tuple[jax.Array, Any, Any]]:
    """`_micro_objective` as two terms, `[objective - off-policy term, off-policy
    term]`, for a backward pass per term (`jax.vjp` with a one-hot cotangent).
    With the cotangent `[1, 1]` the off-policy term's two paths cancel exactly."""
    objective, (shares, diagnostics, off_policy, weights) = _micro_objective(*args)
    return jnp.stack([objective - off_policy, off_policy]), (objective, shares, diagnostics, weights)


def _grad_shares(pieces: dict[str, Any], grads: Any) -> dict[str, jax.Array]:
    """Each piece's gradient norm and its share of the gradient, `<g_i, g> / |g|^2`
    (the pieces add up to `g`, so the shares add up to 1)."""
    total_sq = optax.tree.vdot(grads, grads)
    out = {}
    for name, piece in pieces.items():
        out[f"grad/{name}_norm"] = optax.tree.norm(piece)
        out[f"grad/{name}_share"] = _safe_div(optax.tree.vdot(piece, grads), total_sq)
    return out


Parts = tuple[Batch, ...]


def as_parts(batch: Batch | Parts) -> Parts:
    """`batch` as a tuple of parts; checks that the parts differ only in P.

    Raises:
      ValueError: no part, or parts whose response length T differs (the
        aggregation's normaliser, `seq-mean-token-sum-norm`'s T, must be one).
    """
    parts = batch if isinstance(batch, tuple) else (batch,)
    if not parts:
        raise ValueError("train batch has no parts")
    lengths = [part.tokens_NxT.shape[1] for part in parts]
    if len(set(lengths)) > 1:
        raise ValueError(f"train batch parts have response lengths T = {lengths}; they must be equal")
    return parts


def _add_counts(counts: Sequence[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """The parts' term counts added up (every count is a sum over rows)."""
    return {name: sum(c[name] for c in counts) for name in counts[0]}


def train_step(
    state: TrainState,
    batch: Batch | Parts,
    key: jax.Array,
    *,
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    cfg: TrainSection,
    loss_cfg: LossConfig,
    temperature: float,
    row_sharding: NamedSharding | None = None,
    lr_schedule: optax.Schedule | None = None,
    part_names: Sequence[str] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from one batch; see the module docstring.

    Args:
      state: the current `TrainState` (donated by `Trainer`).
      batch: the rows to train on, or a tuple of parts (see the module
        docstring); each part's N must divide by `cfg.micro_batches`.
      key: per-step randomness (`fold_in(state.rng, step)`). None of the
        built-in objectives is stochastic; the argument is the contract every
        caller uses, so a stochastic regulariser needs no new plumbing.
      model_config, optimizer, cfg, loss_cfg, temperature: static; bound by
        `Trainer`. `cfg` is the run's `train` section (the loss, its
        coefficients, micro-batches, log-prob chunk); log-probs are scored at
        the sampling `temperature`.
      row_sharding: sharding of a micro-batch's rows, keeping every
        micro-batch spread over all data devices; None on one device.
      lr_schedule: `optimizer`'s learning-rate schedule, for `optimizer/lr`
        (static; `Trainer` binds it); None leaves the metric out.
      part_names: the parts' names in the gradient diagnostics (GOLF's
        "original" and "refinement"); () names them part0, part1, ...

    Returns:
      The next state and scalar metrics: `loss`, `loss/policy` (and `loss/kl`),
      the loss functions' diagnostics under `loss/`, `entropy`, `grad_norm`,
      `optimizer/lr`, `train/skipped_nonfinite`, token counts, the
      off-policy statistics `schedule/log_w_*` and `schedule/ess`; for a batch of
      parts with `cfg.grad_shares`, the norm and share of the off-policy term's
      gradient and of each part's on-policy gradient, `grad/<name>_norm` and
      `grad/<name>_share`.
    """
    del key  # Deterministic objectives (see above).
    parts = as_parts(batch)
    m = cfg.micro_batches
    for i, part in enumerate(parts):
        if part.num_rows % m:
            name = "batch" if len(parts) == 1 else f"batch part {i}"
            raise ValueError(f"{name} has {part.num_rows} rows, not divisible by micro_batches={m}")
    counts = _add_counts([term_counts(part, cfg, loss_cfg) for part in parts])
    counts["forwards"] = jnp.float32(m * len(parts))  # Forward passes of the step.
    # GOLF's diagnostics (docs/algorithms.md#golf-diagnostics): the gradient of
    # the off-policy term and of each part's on-policy tokens, kept apart.
    split = cfg.grad_shares and len(parts) > 1
    if split and part_names and len(part_names) != len(parts):
        raise ValueError(f"part_names={part_names} names {len(part_names)} parts; the batch has {len(parts)}")
    names = tuple(part_names) if split and part_names else tuple(f"part{i}" for i in range(len(parts)))

    # Micro-batch j takes rows j, j + M, j + 2M, ...: with rows sharded in
    # contiguous blocks over the data devices, every micro-batch then keeps
    # rows on every device.
    def split_rows(x: jax.Array) -> jax.Array:
        n = x.shape[0]
        return jnp.swapaxes(x.reshape((n // m, m) + x.shape[1:]), 0, 1)

    grad_fn = jax.value_and_grad(_micro_objective, has_aux=True)

    def zeros(tree: Any) -> Any:
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)

    def micro_grads(micro_batch: Batch) -> tuple[Any, ...]:
        """(objective, shares, diagnostics, weight sums, gradient, off-policy
        term's gradient); without `split` the second gradient is () and the
        first is the whole."""
        args = (micro_batch, counts, model_config, cfg, loss_cfg, temperature)
        if not split:
            (objective, (s, d, _, w)), g = grad_fn(state.params, *args)
            return objective, s, d, w, g, ()
        _, vjp_fn, (objective, s, d, w) = jax.vjp(
            lambda p: _split_objective(p, *args), state.params, has_aux=True)

        def on_and_off(_: None) -> tuple[Any, Any]:  # A second backward pass.
            return vjp_fn(jnp.array([1.0, 0.0]))[0], vjp_fn(jnp.array([0.0, 1.0]))[0]

        def on_only(_: None) -> tuple[Any, Any]:  # No injected token: no second pass.
            return vjp_fn(jnp.ones(2))[0], zeros(state.params)

        has_off = jnp.any(micro_batch.response_mask_NxT & micro_batch.off_policy_mask_NxT)
        g, g_off = jax.lax.cond(has_off, on_and_off, on_only, None)
        return objective, s, d, w, g, g_off

    def accumulate(carry: Any, micro_batch: Batch) -> tuple[Any, None]:
        if row_sharding is not None:
            micro_batch = jax.lax.with_sharding_constraint(micro_batch, row_sharding)
        grads, off_grads, loss, shares, diagnostics, weights = carry
        objective, s, d, w, g, g_off = micro_grads(micro_batch)
        return (
            jax.tree.map(jnp.add, grads, g),
            jax.tree.map(jnp.add, off_grads, g_off),
            loss + objective,
            jax.tree.map(jnp.add, shares, s),
            jax.tree.map(jnp.add, diagnostics, d),
            combine_weight_sums(weights, w),
        ), None

    first = jax.tree.map(lambda x: x[:1], parts[0])
    _, (shares_shape, diagnostics_shape, _, weights_shape) = jax.eval_shape(
        lambda: _micro_objective(state.params, first, counts, model_config, cfg, loss_cfg, temperature)
    )

    carry = (zeros(state.params), zeros(state.params) if split else (), jnp.zeros((), jnp.float32),
             zeros(shares_shape), zeros(diagnostics_shape),
             # No rows yet: a shift of -inf (`combine_weight_sums`).
             {**zeros(weights_shape), "shift": jnp.full((), -jnp.inf, jnp.float32)})
    # One scan per part: the parts' shapes differ. With `split`, each part's
    # on-policy gradient is kept apart.
    part_grads = []
    for part in parts:
        if split:
            carry = (zeros(state.params),) + carry[1:]
        carry, _ = jax.lax.scan(accumulate, carry, jax.tree.map(split_rows, part))
        part_grads.append(carry[0])
    _, off_grads, loss, shares, diagnostics, weights = carry
    grads = carry[0]
    grad_pieces = {}
    if split:
        grads = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), part_grads, off_grads)
        grad_pieces = {"off_policy": off_grads, **dict(zip(names, part_grads))}

    grad_norm = optax.tree.norm(grads)

    def update(_: None) -> tuple[Any, Any]:
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), new_opt_state

    # Whether the update keeps every parameter and moment finite: the update's
    # arithmetic once more, reduced to one flag (see the module docstring).
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss) & _all_finite(update(None))

    def keep(_: None) -> tuple[Any, Any]:
        return state.params, state.opt_state

    # A branch rather than an elementwise select over every parameter and
    # moment: no extra passes over the state, and the donated buffers alias.
    params, opt_state = jax.lax.cond(finite, update, keep, None)
    next_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {
        **shares,
        **{name: value.value for name, value in diagnostics.items()},
        **_grad_shares(grad_pieces, grads),
        **weight_stats(weights),
        "loss": loss,
        "grad_norm": grad_norm,
        "train/skipped_nonfinite": (~finite).astype(jnp.float32),
        "train/response_tokens": sum(
            part.response_mask_NxT.sum().astype(jnp.float32) for part in parts),
        "train/offpolicy_tokens": sum(
            (part.response_mask_NxT & part.off_policy_mask_NxT).sum().astype(jnp.float32)
            for part in parts),
    }
    if lr_schedule is not None:
        metrics["optimizer/lr"] = jnp.asarray(lr_schedule(schedule_count(state.opt_state)), jnp.float32)
    return next_state, metrics


def _all_finite(tree: Any) -> jax.Array:
    """True when every floating leaf of `tree` is finite everywhere."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.array(True)


def batch_shardings(mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES,
                    *, routes: bool = False) -> Batch:
    """Every batch field split by rows (`sharding.row_sharding`), the rest whole;
    the routes fields only for a batch that has them (`routes`)."""
    row = sharding_lib.row_sharding(mesh, rules)
    fields = {f.name: row for f in dataclasses.fields(Batch)}
    if not routes:
        fields.update(prompt_routes_NxPxLxA=None, routes_NxTxLxA=None)
    return Batch(**fields)
