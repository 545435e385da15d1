"""GOLF's batch source: critique -> aggregate -> refine -> score -> inject -> one batch.

Letters (golfjax/types.py): B prompts, G samples per prompt, N = B * G rows,
P prompt tokens, T response tokens.

docs/algorithms.md (section GOLF) is the specification. `GolfSource.sample`
first samples and scores the ordinary rollout of G samples per prompt
(golfjax/loops/rl.py), then:

1. every sample gets a critique from the task's critic (a model judge samples
   its critiques with the parameters `sample` is given);
2. each prompt's failed attempts (shortest first, within the token budget of
   the chat-templated prompt) and their critiques become one refinement prompt,
   rendered with the rollout's chat-template variables (`task.template_kwargs`);
3. the SAME policy samples G refinements per refinement prompt; they are
   scored against the ORIGINAL task (a group with nothing to refine scores 0);
4. groups that succeeded fewer than ceil(threshold * G) times get up to
   `n_inject` failed samples replaced by verified-correct refinements, which
   keep the ORIGINAL prompt and are marked off-policy;
5. advantages are computed per group id over the original groups (injected
   samples included in the mean, or left out with `split_mean`) and, separately,
   over the refinement groups, which train on-policy under their refinement
   prompt: that is how the policy learns to refine. Two knobs switch parts of
   this off (docs/algorithms.md#golf-knobs): `train_refinements=False` zeroes
   the refinement groups' advantages, `keep_failure_advantage=False` those of
   the failures in a group that received an injection.

The batch is the original groups plus the refinement groups (2N rows) as two
parts that keep their own prompt lengths (the original prompts are several
times shorter than the refinement prompts, and `train_step` trains parts
exactly as their concatenation, `types.concat_parts`); the train step applies
the policy loss to on-policy tokens and the off-policy term
(`train.off_policy_loss`) to injected ones. Metrics report rewards both before
and after injection, and `golf/distinct_demonstrations`, the distinct (prompt,
response) pairs injected (with an exact-match verifier every verified
refinement of a prompt is one string, so `n_inject > 1` repeats it). With
`log_injected` the metrics also carry the injected rows under `INJECTED_ROWS`
(not a scalar: the train loop writes them to `injected.jsonl`; their record
and offline replay are golfjax/loops/golf_replay.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from golfjax import sharding
from golfjax.config import GolfSection
from golfjax import feedback as critics_lib
from golfjax.feedback import injection as injection_lib
from golfjax.feedback import refinement as refinement_lib
from golfjax.feedback.judge import ModelGenerateFn
from golfjax.loops import golf_replay as replay_lib
from golfjax.loops import rl as rl_lib
from golfjax.rewards.base import Problem
from golfjax.sampling import Rollout
from golfjax.sampling import Sampler
from golfjax.tokenizer import Tokenizer
from golfjax.types import Batch
from golfjax.types import make_batch

# The batch's two parts, as the train step's gradient diagnostics name them.
PART_NAMES = ("original", "refinement")
# The metrics entry holding the injected rows (`GolfSection.log_injected`).
INJECTED_ROWS = "golf/injected_rows"


@dataclasses.dataclass(frozen=True)
class GolfSource:
    """GOLF's 2N-row batch (original + refinement groups) as two parts.

    Attributes:
      cfg: the `golf` section.
      groups: samples and scores the original rollout, and computes advantages.
      critic: the critic of non-judge runs (None with the model judge).
      judge: the judge model, `(params, prompt token lists, key) -> texts`
        (`decode_generate`), for `golf.critic = "judge"`; None otherwise.
    """

    cfg: GolfSection
    groups: rl_lib.GroupSource
    critic: critics_lib.Critic | None = None
    judge: ModelGenerateFn | None = None

    @property
    def threshold(self) -> float:
        return self.cfg.success_threshold if self.cfg.success_threshold >= 0 else self.groups.task.success_threshold

    def _critic(self, params: Any, key: jax.Array) -> critics_lib.Critic:
        if self.judge is None:
            return self.critic
        generate = self.judge
        return critics_lib.make_critic(
            "judge", self.groups.task, generate_fn=lambda prompts: generate(params, prompts, key),
            tokenizer=self.groups.tokenizer, template_kwargs=self.groups.template_kwargs,
        )

    def advantages(self, reward_N: np.ndarray, group_id_N: np.ndarray, injected_N: np.ndarray) -> np.ndarray:
        """The advantages of rows with these rewards over both parts at once
        (the original rows, then as many refinement rows): per group id, the
        injected rows left out of their group's baseline with `split_mean`;
        then the knobs `keep_failure_advantage` (off: the failed rows, reward
        below 1, of a group with an injected row get 0) and `train_refinements`
        (off: the refinement rows get 0). Also after a KL penalty
        (golfjax/loops/schedule.py), where a penalised success counts as failed."""
        group_id_N = np.asarray(group_id_N, np.int32)
        injected_N = np.asarray(injected_N, bool)
        exclude = injected_N if self.cfg.split_mean else None
        advantage_N = np.array(self.groups.advantage(reward_N, group_id_N, exclude), np.float32)
        n = len(advantage_N) // 2
        if not self.cfg.keep_failure_advantage:
            received_N = np.isin(group_id_N, group_id_N[injected_N])
            advantage_N[received_N & ~injected_N & (np.asarray(reward_N) < 1.0)] = 0.0
        if not self.cfg.train_refinements:
            advantage_N[n:] = 0.0
        return advantage_N

    def with_sampler(self, sampler: Sampler) -> GolfSource:
        """The same source sampling rollouts and refinements with `sampler`."""
        return dataclasses.replace(self, groups=self.groups.with_sampler(sampler))

    def sample(
        self, params: Any, problems: Sequence[Problem], key: jax.Array
    ) -> tuple[tuple[Batch, Batch], dict[str, float]]:
        """(original rows, refinement rows) sampled by `params`, and GOLF's metrics."""
        source, tokenizer = self.groups, self.groups.tokenizer
        groups = source.groups(params, problems, key)
        key = jax.random.fold_in(key, 1)
        problems, b, g = groups.problems, len(groups.problems), groups.group_size
        rows = [problems[i // g] for i in range(b * g)]
        critiques = self._critic(params, jax.random.fold_in(key, 0)).critique(
            rows, groups.texts, groups.reward_N.tolist())
        prompts = refinement_lib.build_refinement_prompts(
            problems, groups.texts, groups.reward_N.tolist(), critiques, tokenizer,
            group_size=g,
            max_prompt_tokens=self.cfg.max_refinement_prompt_tokens,
            include=self.cfg.include,
            template=refinement_lib.TEMPLATES[self.cfg.template],
            template_kwargs=source.template_kwargs,
            on_overflow="flag",
        )
        refinable_B = np.array([not p.nothing_to_refine for p in prompts])
        refined = rl_lib.sample_groups(
            source.sampler, params, problems, [p.tokens for p in prompts],
            jax.random.fold_in(key, 1), source.task, tokenizer,
        )
        # docs/algorithms.md, GOLF step 4: a group with nothing to refine scores 0.
        refined.reward_N = np.where(np.repeat(refinable_B, g), refined.reward_N, 0.0).astype(np.float32)

        reward_BxG, refined_BxG = groups.reward_BxG(), refined.reward_BxG()
        plan = injection_lib.plan_injection(
            reward_BxG >= 1.0,
            refined_BxG >= 1.0,
            strategy=self.cfg.strategy,
            success_threshold=self.threshold,
            n_inject=self.cfg.n_inject,
            hybrid_prob=self.cfg.hybrid_prob,
            rng=injection_lib.rng_from_key(jax.random.fold_in(key, 2)),
            refinable_B=refinable_B,
        )
        injected = injection_lib.apply_injection(
            plan, _response_arrays(groups.rollout, groups.reward_N),
            _response_arrays(refined.rollout, refined.reward_N), group_size=g,
        )
        parts = self._combine(groups.rollout, refined.rollout, injected, refined.reward_N, g)
        rows = replay_lib.injected_rows(problems, parts[0], injected.injected_N, g)
        info = {
            **rl_lib.group_metrics(reward_BxG, "reward_pre_injection"),
            **rl_lib.group_metrics(injected.arrays["reward_N"].reshape(b, g), "reward"),
            **rl_lib.group_metrics(refined_BxG, "refinement"),
            "golf/injection_rate": len({i.prompt_index for i in plan}) / b,
            "golf/injected_samples": float(injected.injected_N.sum()),
            "golf/distinct_demonstrations": float(replay_lib.distinct_demonstrations(rows)),
            "golf/refinable_frac": float(refinable_B.mean()),
            "golf/refinement_success": float((refined_BxG >= 1.0)[refinable_B].mean())
            if refinable_B.any() else 0.0,
            "golf/over_budget": float(np.mean([p.over_budget for p in prompts])),
            "samples/generated": float(2 * b * g),
        }
        if self.cfg.log_injected:
            info[INJECTED_ROWS] = rows
        return parts, info

    def _combine(
        self,
        original: Rollout,
        refined: Rollout,
        injected: injection_lib.Injected,
        refined_reward_N: np.ndarray,
        g: int,
    ) -> tuple[Batch, Batch]:
        """The original rows (injection applied) and the refinement rows, each
        with its own prompts; advantages are computed over both at once."""
        n = original.tokens_NxT.shape[0]
        arrays = injected.arrays
        # Original group b is id b; its refinement group is id B + b.
        group_id = np.concatenate([np.arange(n) // g, n // g + np.arange(n) // g]).astype(np.int32)
        reward = np.concatenate([arrays["reward_N"], refined_reward_N]).astype(np.float32)
        advantage = self.advantages(reward, group_id, np.concatenate([injected.injected_N, np.zeros(n, bool)]))
        original_part = make_batch(
            prompt_tokens_NxP=np.asarray(original.prompt_tokens_NxP),
            prompt_mask_NxP=np.asarray(original.prompt_mask_NxP),
            tokens_NxT=arrays["tokens_NxT"],
            response_mask_NxT=arrays["response_mask_NxT"],
            behaviour_logp_NxT=arrays["behaviour_logp_NxT"],
            advantage_N=advantage[:n],
            reward_N=reward[:n],
            group_id_N=group_id[:n],
            off_policy_mask_NxT=injected.off_policy_mask_NxT,
        )
        refinement_part = make_batch(
            prompt_tokens_NxP=np.asarray(refined.prompt_tokens_NxP),
            prompt_mask_NxP=np.asarray(refined.prompt_mask_NxP),
            tokens_NxT=np.asarray(refined.tokens_NxT),
            response_mask_NxT=np.asarray(refined.response_mask_NxT),
            behaviour_logp_NxT=np.asarray(refined.behaviour_logp_NxT),
            advantage_N=advantage[n:],
            reward_N=reward[n:],
            group_id_N=group_id[n:],
        )
        return original_part, refinement_part


def _response_arrays(rollout: Rollout, reward_N: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "tokens_NxT": np.asarray(rollout.tokens_NxT),
        "response_mask_NxT": np.asarray(rollout.response_mask_NxT),
        "behaviour_logp_NxT": np.asarray(rollout.behaviour_logp_NxT),
        "reward_N": np.asarray(reward_N, np.float32),
    }


def decode_generate(sampler: Sampler, tokenizer: Tokenizer) -> ModelGenerateFn:
    """The judge model: one response per prompt sampled with `sampler` (group size 1)."""

    def generate(params: Any, prompts: Sequence[Sequence[int]], key: jax.Array) -> list[str]:
        rollout = sharding.global_to_host(sampler.generate(params, [list(p) for p in prompts], key))
        return rl_lib.decode_responses(rollout, tokenizer)

    return generate
