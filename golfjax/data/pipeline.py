"""RL prompts through a grain pipeline: shard, filter by length, shuffle, batch, repeat.

The pipeline runs over any random-access sequence of problems; for a
dataset-backed task (golfjax/data/tfds_prompts.py) that sequence reads its
records from ArrayRecord files through `tfds.data_source`, so each process
reads only its own shard. Per process:

    records[shard_index::num_shards]          this process's shard
      -> drop prompts over max_prompt_tokens  one pass at construction, counted
      -> shuffle(seed)                        a new permutation every epoch
      -> chat template -> prompt token ids    the tokenizer's template
      -> batch(batch_size, drop_remainder)    a batch never spans two epochs
      -> repeat()                             epoch after epoch

Prompts are rendered exactly as the RL loop renders them (one user message,
then the generation prompt, `template_kwargs` passed to the template), so the
length filter measures the prompts the sampler will see. Everything that can be
empty (the dataset, this process's shard, the shard after filtering) raises at
construction, never mid-run.

`state()` is grain's iterator state (a JSON dict) plus what makes it meaningful
(dataset size, shard count, batch size, seed, length limit); it is the same on
every process, so the primary host's copy in the checkpoint resumes all of them.
`next()` returns item positions like `golfjax.data.iterator.EpochIterator`, so
the train loop can use either. With `gather=True` (the multi-process
setting) each process still draws only from its own shard, and `next()`
all-gathers the positions, so that every process holds the same global batch
(process 0's prompts first): the host-side work of a step (scoring, critiques,
refinement prompts) then runs on the whole rollout, which `golfjax.sharding`
gathers onto every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from absl import logging

from golfjax import process_groups as groups
from golfjax import sharding
from golfjax.rewards.base import Problem
from golfjax.tokenizer import Tokenizer

# Keys of `state()` that must match the resuming pipeline's for an exact resume.
_IDENTITY = ("num_problems", "num_shards", "batch_size", "seed", "max_prompt_tokens")


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One prompt of a batch: the problem, its position in the dataset, its ids."""

    index: int
    problem: Problem
    prompt_tokens: list[int]


@dataclasses.dataclass(frozen=True)
class LengthFilterStats:
    """What the length filter did to this process's shard.

    Attributes:
      total: prompts in the shard.
      kept: prompts of at most `max_prompt_tokens` tokens.
      dropped: `total - kept`.
      max_prompt_tokens: the limit.
      longest_kept: the token count of the longest kept prompt.
    """

    total: int
    kept: int
    dropped: int
    max_prompt_tokens: int
    longest_kept: int


class PromptPipeline:
    """Batches of RL prompts from a sequence of problems, epoch after epoch.

    Args:
      problems: random-access problems that can be sliced (a list, or a
        dataset-backed task's `load("train")`, which reads slices in bulk).
      tokenizer: renders the prompts (chat template) and counts their tokens.
      batch_size: prompts per batch of this process.
      seed: the shuffle seed; epoch e is shuffled with a seed derived from
        (seed, e).
      max_prompt_tokens: longer prompts are dropped (e.g. the largest prompt
        bucket of the sampler, which could not take them).
      template_kwargs: chat template variables, as the RL loop passes them.
      shard_index, num_shards: this process's shard; default
        this process's of its group's (golfjax/process_groups.py).
      gather: `next()` returns the positions of every process's batch, in
        process order (`batch_size * num_shards` of them); needs the default
        shards, one per process.

    Raises:
      ValueError: the dataset or this process's shard is empty, or the shard
        keeps fewer than `batch_size` prompts after the length filter.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        tokenizer: Tokenizer,
        *,
        batch_size: int,
        seed: int,
        max_prompt_tokens: int,
        template_kwargs: Mapping[str, Any] | None = None,
        shard_index: int | None = None,
        num_shards: int | None = None,
        gather: bool = False,
    ) -> None:
        mine = (groups.process_index(), groups.process_count())
        if gather and (shard_index, num_shards) not in ((None, None), mine):
            raise ValueError(
                f"gather=True needs one shard per process (shard_index={mine[0]},"
                f" num_shards={mine[1]}), got {shard_index} of {num_shards}")
        self.gather = gather
        shard_index = mine[0] if shard_index is None else shard_index
        num_shards = mine[1] if num_shards is None else num_shards
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index={shard_index}; expected in [0, {num_shards})")
        if batch_size < 1 or max_prompt_tokens < 1:
            raise ValueError(
                f"batch_size={batch_size}, max_prompt_tokens={max_prompt_tokens}; expected >= 1")
        num_problems = len(problems)
        if num_problems == 0:
            raise ValueError(f"the dataset is empty: {problems!r} holds no problems")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.identity = {"num_problems": num_problems, "num_shards": num_shards,
                         "batch_size": batch_size, "seed": seed,
                         "max_prompt_tokens": max_prompt_tokens}
        self.shard_index = shard_index

        records = grain.MapDataset.source(problems)
        shard = range(shard_index, num_problems, num_shards)
        if len(shard) == 0:
            raise ValueError(
                f"shard {shard_index} of {num_shards} is empty: the dataset has only"
                f" {num_problems} problems")
        # One pass over the shard now, so that an empty result fails before the
        # run starts and the counts can be logged; only kept positions are kept.
        lengths = [len(self._render(p)) for p in problems[shard_index::num_shards]]
        kept = [i for i, n in zip(shard, lengths) if n <= max_prompt_tokens]
        self.stats = LengthFilterStats(
            total=len(lengths), kept=len(kept), dropped=len(lengths) - len(kept),
            max_prompt_tokens=max_prompt_tokens,
            longest_kept=max((n for n in lengths if n <= max_prompt_tokens), default=0))
        logging.info(
            "prompt pipeline, shard %d of %d: kept %d of %d prompts, dropped %d longer than %d"
            " tokens", shard_index, num_shards, self.stats.kept, self.stats.total,
            self.stats.dropped, max_prompt_tokens)
        if len(kept) < batch_size:
            raise ValueError(
                f"shard {shard_index} of {num_shards} keeps {len(kept)} of {len(lengths)} prompts"
                f" ({self.stats.dropped} are longer than max_prompt_tokens={max_prompt_tokens}),"
                f" fewer than batch_size={batch_size}")

        def example(index: int) -> PromptExample:
            problem = records[index]
            return PromptExample(index, problem, self._render(problem))

        self.batches_per_epoch = len(kept) // batch_size
        self._dataset = (
            grain.MapDataset.source(kept)
            .shuffle(seed=seed % 2**32)
            .map(example)
            .batch(batch_size, drop_remainder=True, batch_fn=list)
            .repeat()
        )
        self._iterator = self._new_iterator()

    def _render(self, problem: Problem) -> list[int]:
        return self.tokenizer.encode_prompt(problem.question, self.template_kwargs)

    def _new_iterator(self) -> grain.DatasetIterator:
        # No reader threads: a batch renders in a small part of a step, and background
        # threads would only contend for the GIL with the training loop.
        read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        return iter(self._dataset.to_iter_dataset(read))

    def next_batch(self) -> list[PromptExample]:
        """The next `batch_size` prompts, rendered."""
        return next(self._iterator)

    def next(self) -> list[int]:
        """The positions (in `problems`) of the next batch; `EpochIterator.next`'s contract.

        With `gather`, every process's positions, in process order (all processes
        must call this together).
        """
        local = [example.index for example in self.next_batch()]
        if not self.gather:
            return local
        return [int(i) for i in sharding.allgather_processes(np.asarray(local, np.int64)).reshape(-1)]

    def state(self) -> dict[str, Any]:
        """A JSON-able position: restoring it replays the batches that follow."""
        return {"grain": self._iterator.get_state(), **self.identity}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a `state()`, saved by a pipeline of the same configuration.

        Raises:
          ValueError: `state` is not a pipeline state, or it was saved by a
            pipeline with another dataset size, shard count, batch size, seed or
            length limit (naming the key), so its position would mean something
            else here.
        """
        if not isinstance(state, Mapping) or "grain" not in state:
            raise ValueError(f"bad prompt pipeline state {state!r}; expected a dict with 'grain'")
        for key in _IDENTITY:
            if state.get(key) != self.identity[key]:
                raise ValueError(
                    f"the prompt pipeline state was saved with {key}={state.get(key)!r}, but"
                    f" this pipeline has {key}={self.identity[key]!r}; it cannot resume exactly")
        iterator = self._new_iterator()
        iterator.set_state(dict(state["grain"]))
        self._iterator = iterator
