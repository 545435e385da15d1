"""Supervised cold start: reference solutions as train batches, before RL.

Letters (golfjax/types.py): N rows, P prompt tokens, T response tokens.

Maximising the log-likelihood of reference responses is REINFORCE with
advantage 1 under `token-mean` aggregation: `l_t = -1 * logp_t`. So the cold
start reuses the RL train step unchanged (loss "reinforce", `ColdStart.train_section`);
this module only chooses each step's problems and lays out the examples of
golfjax/data/sft_examples.py (prompt ids, response ids ending in eos) as an
ordinary `Batch` with advantage 1 on every row. It needs no sampler: a test
drives `ColdStart.batch` with a tokenizer alone.

A batch is all plain or all refinement-format examples (`cold_start.
refine_first_steps`, `refine_fraction`): plain prompts are several times
shorter, and a mixed batch would pad them to the refinement prompts' bucket.
Which kind a step is, and a refinement batch's problems, are drawn from the
seed and the step, so a resumed run draws the same ones; plain batches come
from the run's data iterator, whose position is checkpointed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from golfjax import config as config_lib
from golfjax import feedback as critics_lib
from golfjax.data import sft_examples
from golfjax.data.sft_examples import SFTExample
from golfjax.data.iterator import EpochIterator
from golfjax.feedback import refinement as refinement_lib
from golfjax.rewards import make_task
from golfjax.rewards.base import Problem
from golfjax.rewards.base import Task
from golfjax.tokenizer import Tokenizer
from golfjax.types import Batch
from golfjax.types import make_batch


def sft_batch(
    examples: Sequence[SFTExample], *, prompt_len: int, response_len: int, pad_id: int
) -> Batch:
    """Prompts left-padded to `prompt_len`, responses right-padded to `response_len`.

    Raises:
      ValueError: an example does not fit, naming its index and the lengths.
    """
    n = len(examples)
    prompt_tokens_NxP = np.full((n, prompt_len), pad_id, np.int32)
    prompt_mask_NxP = np.zeros((n, prompt_len), bool)
    tokens_NxT = np.full((n, response_len), pad_id, np.int32)
    response_mask_NxT = np.zeros((n, response_len), bool)
    for i, example in enumerate(examples):
        prompt, response = example.prompt_tokens, example.response_tokens
        if len(prompt) > prompt_len or len(response) > response_len:
            raise ValueError(
                f"cold-start example {i}: prompt of {len(prompt)} tokens and response of"
                f" {len(response)} tokens do not fit prompt_len={prompt_len},"
                f" response_len={response_len}"
            )
        prompt_tokens_NxP[i, prompt_len - len(prompt) :] = prompt
        prompt_mask_NxP[i, prompt_len - len(prompt) :] = True
        tokens_NxT[i, : len(response)] = response
        response_mask_NxT[i, : len(response)] = True
    return make_batch(
        prompt_tokens_NxP=prompt_tokens_NxP,
        prompt_mask_NxP=prompt_mask_NxP,
        tokens_NxT=tokens_NxT,
        response_mask_NxT=response_mask_NxT,
        behaviour_logp_NxT=np.zeros((n, response_len), np.float32),
        advantage_N=np.ones(n, np.float32),
    )


@dataclasses.dataclass(frozen=True)
class ColdStart:
    """The cold start's problems and batch layout (see the module docstring).

    Attributes:
      cfg: the `cold_start` section.
      seed: the run's seed (refinement draws come from seed and step).
      task, problems: the plain examples' task and problems.
      refine_task, refine_problems: those of the refinement-format batches.
      refine_critic: critiques the synthetic failed attempts (None: no refinement batches).
      tokenizer: templates prompts and encodes responses.
      template_kwargs: chat-template variables (`task.template_kwargs`).
      refinement_template: GOLF's refinement prompt (`golf.template`).
      max_prompt_tokens: the refinement prompts' budget (`golf.max_refinement_prompt_tokens`).
      prompt_buckets: a batch's P is the smallest bucket that fits (`sampling.prompt_buckets`).
      response_len: T (`sampling.max_new_tokens`).
    """

    cfg: config_lib.ColdStartSection
    seed: int
    task: Task
    problems: Sequence[Problem]
    refine_task: Task
    refine_problems: Sequence[Problem]
    refine_critic: critics_lib.Critic | None
    tokenizer: Tokenizer
    template_kwargs: Mapping[str, Any]
    refinement_template: refinement_lib.RefinementTemplate
    max_prompt_tokens: int
    prompt_buckets: tuple[int, ...]
    response_len: int

    def data(self) -> EpochIterator:
        """The iterator of the plain batches' problems (its state is checkpointed)."""
        return EpochIterator(len(self.problems), self.cfg.batch_size, self.seed)

    def batch(self, step: int, data: EpochIterator) -> tuple[Batch, dict[str, float]]:
        """Cold-start `step`'s host batch and its kind (`cold_start/refine_batch`)."""
        refine = self.cfg.is_refine_step(self.seed, step)
        if refine:
            rows = np.random.default_rng([self.seed, step, 1]).choice(
                len(self.refine_problems), self.cfg.batch_size, replace=False)
            task, critic = self.refine_task, self.refine_critic
            problems = [self.refine_problems[i] for i in rows]
        else:
            task, critic = self.task, None
            problems = [self.problems[i] for i in data.next()]
        examples = sft_examples.make_cold_start_examples(
            task, problems, self.tokenizer,
            critic=critic,
            refine_fraction=1.0 if refine else 0.0,
            max_prompt_tokens=self.max_prompt_tokens,
            template=self.refinement_template,
            template_kwargs=self.template_kwargs,
            seed=self.seed * 100_003 + step,
        )
        batch = sft_batch(
            examples, prompt_len=self.prompt_len(examples), response_len=self.response_len,
            pad_id=self.tokenizer.pad_id,
        )
        return batch, {"cold_start/refine_batch": float(refine)}

    def prompt_len(self, examples: Sequence[SFTExample]) -> int:
        """The smallest prompt bucket that fits every example (so the cold start
        compiles once per bucket, as the rollout does), or the longest prompt."""
        longest = max(len(e.prompt_tokens) for e in examples)
        return next((b for b in self.prompt_buckets if b >= longest), longest)

    @staticmethod
    def train_section(train: config_lib.TrainSection) -> config_lib.TrainSection:
        """The train step's section for supervised batches: REINFORCE with
        advantage 1, no KL or entropy term, the whole batch at once."""
        return dataclasses.replace(
            train, loss="reinforce", kl_coef=0.0, ref_path="", entropy_coef=0.0, micro_batches=1)

    @staticmethod
    def metrics(step_metrics: Mapping[str, float]) -> dict[str, float]:
        """The train step's metrics under the cold start's names."""
        return {
            "cold_start/nll": step_metrics["loss"],
            "grad_norm": step_metrics["grad_norm"],
            "optimizer/lr": step_metrics["optimizer/lr"],
            "train/response_tokens": step_metrics["train/response_tokens"],
            "train/skipped_nonfinite": step_metrics["train/skipped_nonfinite"],
        }


def _sft_problems(cfg: config_lib.RunConfig, task: Task, held_out: set[str], key: str) -> list[Problem]:
    """`task`'s train problems with a reference solution, less any held-out RL
    problem (its question in `held_out`): a split drawn with other kwargs may
    hold some, and the cold start must not train on the evaluation."""
    problems = [p for p in task.load("train") if p.solution and p.question not in held_out]
    if len(problems) < cfg.cold_start.batch_size:
        raise ValueError(
            f"config.{key}: task {cfg.task.name!r} gives {len(problems)} train problems with a"
            f" reference solution and not held out, fewer than config.cold_start.batch_size ="
            f" {cfg.cold_start.batch_size}")
    return problems


def make_cold_start(cfg: config_lib.RunConfig, tokenizer: Tokenizer, held_out: set[str]) -> ColdStart:
    """The run's `ColdStart` (`cfg.cold_start.steps` > 0); `held_out` holds the
    questions of the RL test split, which the cold start never trains on."""
    cold_kwargs = {**cfg.task.task_kwargs(), **cfg.cold_start.task_kwargs}
    task = make_task(cfg.task.name, **cold_kwargs)
    problems = _sft_problems(cfg, task, held_out, "cold_start.task_kwargs")
    refine_task, refine_problems, refine_critic = task, problems, None
    if cfg.cold_start.refines:
        if cfg.cold_start.refine_task_kwargs:
            refine_task = make_task(cfg.task.name, **{**cold_kwargs, **cfg.cold_start.refine_task_kwargs})
            refine_problems = _sft_problems(cfg, refine_task, held_out, "cold_start.refine_task_kwargs")
        # Critiques of the refinement batches' synthetic failed attempts.
        refine_critic = critics_lib.make_critic(cfg.golf.critic or None, refine_task)
    return ColdStart(
        cfg=cfg.cold_start,
        seed=cfg.seed,
        task=task,
        problems=problems,
        refine_task=refine_task,
        refine_problems=refine_problems,
        refine_critic=refine_critic,
        tokenizer=tokenizer,
        template_kwargs=dict(cfg.task.template_kwargs),
        refinement_template=refinement_lib.TEMPLATES[cfg.golf.template],
        max_prompt_tokens=cfg.golf.max_refinement_prompt_tokens,
        prompt_buckets=cfg.sampling.prompt_buckets,
        response_len=cfg.sampling.max_new_tokens,
    )
