"""Rollout engine: a jitted sampler with a KV cache, shared prompt prefixes and
behaviour log-probs.

    rollout = generate(params, prompts, key, cfg, model_config=config, mesh=mesh)

or, holding the compiled programs across calls explicitly,

    sampler = Sampler(config, cfg, mesh)
    rollout = sampler.generate(params, prompts, key)

Shape letters:
    B  prompts (the batch bucket)        G  samples per prompt (`group_size`)
    N  rows, B * G (prompt b owns rows b*G .. b*G + G - 1)
    P  prompt bucket length              T  `max_new_tokens`
    S  KV-cache slots, at most P + T     V  vocabulary size
    C  candidate tokens kept by top-k    X  any leading axes

One call runs:
1. Host: the prompts are left-padded into the smallest prompt bucket >= the
   longest prompt, and the batch is filled with dummy rows up to the smallest
   batch bucket >= the number of prompts. Programs are compiled per (B, P), so
   prompt lengths and batch sizes inside a bucket never recompile.
2. Prefill (one program per (B, P)): a single forward pass over the B prompts
   writes their keys and values into a cache of P slots.
3. Decode (one program per (B, P)): the prefix cache is repeated G times along
   the batch, so each prompt is prefilled once, not G times. `lax.while_loop`s
   then sample one token per row per iteration, with one Q = 1 forward pass, and
   exit as soon as every row has finished (a stop token) or T tokens exist.
   The steps are split over a few consecutive loops and the cache grows
   between them, so each step reads little more than the slots its loop can
   have written (`decode_segments`). On TPU each step runs the layers as
   one scanned body over a cache stacked over layers, so each loop compiles
   one layer; on CPU and GPU the layers run unrolled over per-layer buffers
   (`ModelConfig.decode_layers` says why), and on CPU a loop writes its
   tokens' keys and values into a float32 recent buffer merged after it
   (golfjax/models/cache.py).
   Nothing leaves the device inside the loops.
   The programs live in golfjax/decode.py, the per-step draw in
   golfjax/draw.py, `SamplingConfig` in golfjax/sampling_config.py.

Sampling and behaviour log-probs. With `temperature > 0` each token is drawn
from the *processed* distribution

    q = softmax(mask_top_p(mask_top_k(logits / temperature)))

(top-k keeps the k largest logits; top-p then keeps the smallest prefix of those,
most probable first, whose mass reaches top_p; masked logits are -inf and q is
renormalised over the rest), and `behaviour_logp_NxT` holds `log q(token)`, the
log-probability of the distribution actually sampled from. With
`temperature == 0` the token is the argmax and, since a one-hot distribution
has no useful log-probability, the reported value is that of the untruncated
temperature-1 distribution, `log_softmax(logits)[token]`.

How the trainer must recompute log-probs so that they match (for importance
ratios against `behaviour_logp_NxT`): run the model teacher-forced over prompt
+ response and take `log_softmax(logits / temperature)` at the response tokens,
or `processed_log_probs(logits, cfg)`, which also applies the same top-k/top-p
truncation. For RL, sample with `top_p=1, top_k=0`: then the behaviour
distribution is exactly `softmax(logits / temperature)`, its support is the
whole vocabulary, and the recomputation differs only by floating-point noise
(tests check 1e-5 at temperature 1). With truncation the recomputed set of kept
tokens can differ from the sampler's when two logits are within rounding of the
cut, and policy-gradient ratios through a truncated distribution are biased.

Sharding: with a mesh, rows (B for prefill, N for decode) are split by the
rule table's `batch` entry (`sharding.row_sharding`), parameters follow
`transformer.param_shardings`, the cache `cache.cache_shardings` (rows by
`batch`, kv heads by `kv_heads`). Every batch bucket must therefore be a
multiple of the number of row shards, which `Sampler` checks up front. The
programs are traced under `attention.partitioned(mesh)`, so an MoE model's
experts stay split over the mesh as in training (golfjax/models/moe.py).

MoE models: the rollout also holds the experts every prompt token and every
fed-back response token was routed to in each MoE layer
(`Rollout.prompt_routes_NxPxLxA`, `routes_NxTxLxA`), for the train step's
routing replay and its route-mismatch metric (golfjax/train/step.py).

Multi-process (a mesh over the devices of several JAX processes): every
process calls `generate` with the same prompts and key; each feeds the rows of
its own devices (`sharding.host_to_global`). The returned `Rollout` is then a
global array split over processes: read it with `sharding.global_to_host`,
not `jax.device_get`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from golfjax import decode as decode_lib
from golfjax import sharding as sharding_lib
from golfjax.decode import (FINISH_LENGTH, FINISH_STOP, MIN_LOOP_STEPS, Rollout,
                            decode_bytes_per_step, decode_segments)
from golfjax.draw import processed_log_probs, sample
from golfjax.models import attention as attention_lib
from golfjax.models import cache as cache_lib
from golfjax.models import platform as platform_lib
from golfjax.models import transformer
from golfjax.models.config import ModelConfig, resolve_decode_layers
from golfjax.sampling_config import SamplingConfig

Params = Any
__all__ = [
    "FINISH_LENGTH", "FINISH_STOP", "MIN_LOOP_STEPS", "Rollout", "Sampler",
    "SamplingConfig", "decode_bytes_per_step", "decode_segments", "generate",
    "make_sampler", "pad_prompts", "processed_log_probs", "sample",
]


def _bucket(size: int, buckets: tuple[int, ...], what: str, field: str) -> int:
    for bucket in buckets:
        if bucket >= size:
            return bucket
    raise ValueError(
        f"{what} {size} exceeds the largest of SamplingConfig.{field} "
        f"{buckets}; add a larger bucket"
    )


def _as_prompt_list(prompts: Any, prompt_mask: Any) -> list[np.ndarray]:
    """Token-id lists, or a left-padded [B, P] array with its mask, as rows."""
    if prompt_mask is None and not isinstance(prompts, (np.ndarray, jax.Array)):
        return [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    tokens = np.asarray(prompts)
    if tokens.ndim != 2:
        raise ValueError(
            f"prompt array must be 2-D [B, P], got shape {tokens.shape}")
    mask = (np.ones(tokens.shape, bool) if prompt_mask is None
            else np.asarray(prompt_mask).astype(bool))
    if mask.shape != tokens.shape:
        raise ValueError(f"prompt_mask has shape {mask.shape}, expected "
                         f"{tokens.shape} (that of the prompt array)")
    # Left padding: once a row's real tokens start they run to the end.
    if np.any(mask[:, :-1] & ~mask[:, 1:]):
        raise ValueError("prompt_mask must be left-padded: False* then True*")
    return [row[m].astype(np.int64) for row, m in zip(tokens, mask)]


def pad_prompts(prompts: Sequence[np.ndarray], batch: int, length: int,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token rows into [batch, length] int32 tokens and a bool mask."""
    tokens_BxP = np.full((batch, length), pad_id, np.int32)
    mask_BxP = np.zeros((batch, length), bool)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            tokens_BxP[row, length - len(prompt):] = prompt
            mask_BxP[row, length - len(prompt):] = True
    return tokens_BxP, mask_BxP


@dataclasses.dataclass(frozen=True)
class _Programs:
    prefill: Callable[..., tuple[cache_lib.KVCache, jax.Array, jax.Array | None]]
    decode: Callable[..., Rollout]


class Sampler:
    """Compiles prefill and decode once per (batch bucket, prompt bucket).

    Attributes:
      model_config, cfg, mesh: as given.
      trace_counts: how many times each program was traced ("prefill",
        "decode"); tests use it to check that buckets do not recompile.
    """

    def __init__(self, model_config: ModelConfig, cfg: SamplingConfig,
                 mesh: Mesh | None = None,
                 rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES) -> None:
        self.model_config = model_config
        self.cfg = cfg
        self.mesh = mesh
        self._rules = rules
        self._programs: dict[tuple[int, int], _Programs] = {}
        self.trace_counts: collections.Counter[str] = collections.Counter()
        if mesh is not None:
            shards = sharding_lib.row_shards(mesh, rules)
            bad = [b for b in cfg.batch_buckets if b % shards]
            if bad:
                raise ValueError(
                    f"SamplingConfig.batch_buckets {bad} are not multiples of the "
                    f"mesh's {shards} row shards (data x fsdp); use multiples "
                    f"such as {tuple(shards * 2**i for i in range(4))}"
                )
            self._param_shardings = transformer.param_shardings(
                model_config, mesh, rules)
        platform = (jax.devices()[0] if mesh is None
                    else mesh.devices.flat[0]).platform
        # On a CPU mesh, queued multi-device programs can deadlock one another
        # (XLA's simulated devices share a thread pool); block on each result.
        self._block = mesh is not None and mesh.size > 1 and platform == "cpu"
        # How the cached forward runs the layers (`ModelConfig.decode_layers`,
        # "auto" resolved for this platform, `resolve_decode_layers`): scanned,
        # one compiled layer body over a cache stacked over layers, or
        # unrolled. The programs get the config with the resolved value, so
        # their caches take that form.
        self._decode_config = model_config.replace(
            decode_layers=resolve_decode_layers(model_config, platform))
        # Per-layer weight copies and the recent buffer (`decode.decode`) are
        # for CPU with unrolled layers, where XLA copies a slice of a stacked
        # weight on every use and rewrites a whole bf16 buffer to update one
        # slot. On TPU/GPU both are native, and a second copy of the weights
        # would cost accelerator memory.
        self._split_layers = (platform == "cpu" and
                              self._decode_config.decode_layers == "unrolled")

    def _counted(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any) -> Any:
            self.trace_counts[name] += 1  # Runs at trace time only.
            # The mesh's platform, not the host's; an MoE layer splits its
            # experts over the mesh as in training (golfjax/models/moe.py).
            partitioned = (contextlib.nullcontext() if self.mesh is None
                           else attention_lib.partitioned(self.mesh, self._rules))
            with platform_lib.compiling_for(self.mesh), partitioned:
                return fn(*args)
        return traced

    def _compile(self, b: int, p: int) -> _Programs:
        c, cfg = self._decode_config, self.cfg
        s = p + cfg.max_new_tokens
        prefill = self._counted("prefill", functools.partial(
            decode_lib.prefill, model_config=c))
        decode = self._counted("decode", functools.partial(
            decode_lib.decode, model_config=c, cfg=cfg,
            split_layers=self._split_layers, recent_buffer=self._split_layers))
        if self.mesh is None:
            return _Programs(prefill=jax.jit(prefill), decode=jax.jit(decode))
        mesh = self.mesh
        # Rows ([B] or [N], and the leading axis of [B, .] / [N, .]) split by
        # the rule table's "batch" entry; the rest of each array whole.
        rows = rows2 = sharding_lib.row_sharding(mesh, self._rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        cache_b = cache_lib.cache_shardings(c, b, p, mesh, self._rules)
        # Checks that the N-row cache divides too (it is only constrained
        # through propagation inside decode).
        cache_lib.cache_shardings(c, b * cfg.group_size, s, mesh, self._rules)
        # An MoE model's recorded routes: split by rows like the tokens.
        routes = rows2 if c.moe_layers else None
        out_rollout = Rollout(*([rows2] * 5), rows, rows, rows, routes, routes)
        return _Programs(
            # params: by the model's rules; prompts: rows split over data x fsdp.
            prefill=jax.jit(prefill,
                            in_shardings=(self._param_shardings, rows2, rows2),
                            out_shardings=(cache_b, rows2, routes)),
            # The prefix cache arrives with the prefill's sharding; the key is
            # replicated so every device draws the same per-step keys.
            decode=jax.jit(decode,
                           in_shardings=(self._param_shardings, cache_b, rows2,
                                         rows2, rows2, rows, replicated, routes),
                           out_shardings=out_rollout),
        )

    def programs(self, batch_bucket: int, prompt_bucket: int) -> _Programs:
        key = (batch_bucket, prompt_bucket)
        if key not in self._programs:
            self._programs[key] = self._compile(batch_bucket, prompt_bucket)
        return self._programs[key]

    def _to_mesh(self, tokens_BxP: np.ndarray, mask_BxP: np.ndarray,
                 valid_B: np.ndarray, key: jax.Array) -> tuple[jax.Array, ...]:
        mesh = self.mesh
        rows = rows2 = sharding_lib.row_sharding(mesh, self._rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        return sharding_lib.host_to_global(
            (tokens_BxP, mask_BxP, valid_B, key), (rows2, rows2, rows, replicated))

    def _wait(self, tree: Any) -> Any:
        return jax.block_until_ready(tree) if self._block else tree

    def generate(self, params: Params, prompts: Sequence[Sequence[int]] | np.ndarray,
                 key: jax.Array, *, prompt_mask: np.ndarray | None = None
                 ) -> Rollout:
        """Samples `group_size` responses per prompt.

        Args:
          params: the model's params tree (resharded to the model's rules if
            placed otherwise).
          prompts: token-id sequences of any lengths, or a left-padded 2-D array
            (with `prompt_mask`, True on real tokens; without it every entry
            counts).
          key: a PRNG key; the same key and inputs give the same rollout.
          prompt_mask: see `prompts`.

        Returns:
          A Rollout of N = len(prompts) * group_size rows, prompt-major.
        """
        cfg = self.cfg
        rows = _as_prompt_list(prompts, prompt_mask)
        if not rows:
            raise ValueError("generate needs at least one prompt")
        v = self.model_config.vocab_size
        for i, row in enumerate(rows):
            if not len(row):
                raise ValueError(f"prompt {i} is empty")
            if row.min() < 0 or row.max() >= v:
                raise ValueError(f"prompt {i} has token ids outside [0, {v})")
        num = len(rows)
        b = _bucket(num, cfg.batch_buckets, "number of prompts", "batch_buckets")
        p = _bucket(max(len(r) for r in rows), cfg.prompt_buckets,
                    "prompt length", "prompt_buckets")
        tokens_BxP, mask_BxP = pad_prompts(rows, b, p, cfg.pad_id)
        valid_B = np.arange(b) < num
        programs = self.programs(b, p)
        if self.mesh is not None:
            params = jax.device_put(params, self._param_shardings)
            if jax.process_count() > 1:
                # A multi-process job's jit takes no host arrays with shardings;
                # every process holds the same prompts and key (module docstring).
                tokens_BxP, mask_BxP, valid_B, key = self._to_mesh(
                    tokens_BxP, mask_BxP, valid_B, key)
        cache, logits_BxV, routes_BxPxLxA = self._wait(
            programs.prefill(params, tokens_BxP, mask_BxP))
        rollout = self._wait(programs.decode(params, cache, logits_BxV, tokens_BxP,
                                             mask_BxP, valid_B, key, routes_BxPxLxA))
        if num < b:  # Drop the dummy rows (prompt-major, so they are last).
            rollout = self._wait(jax.tree.map(lambda x: x[:num * cfg.group_size],
                                              rollout))
        return rollout


@functools.lru_cache(maxsize=16)
def make_sampler(model_config: ModelConfig, cfg: SamplingConfig,
                 mesh: Mesh | None = None) -> Sampler:
    """A shared `Sampler`, so repeated `generate` calls reuse compiled programs."""
    return Sampler(model_config, cfg, mesh)


def generate(params: Params, prompts: Sequence[Sequence[int]] | np.ndarray,
             key: jax.Array, cfg: SamplingConfig, *, model_config: ModelConfig,
             mesh: Mesh | None = None, prompt_mask: np.ndarray | None = None
             ) -> Rollout:
    """Functional entry point: `make_sampler(model_config, cfg, mesh).generate`."""
    return make_sampler(model_config, cfg, mesh).generate(
        params, prompts, key, prompt_mask=prompt_mask)
