"""A deterministic, resumable order over a dataset's items.

Each epoch visits every item once in a permutation drawn from `(seed, epoch)`;
`state()` is two integers, saved in every checkpoint, so a resumed run draws
exactly the batches the uninterrupted run would have drawn. With several
processes (multi-host), each takes every `num_shards`-th item of the epoch's
permutation starting at `shard_index`, so the processes' batches are disjoint
and together cover the epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EpochIterator:
    """Batches of item indices, epoch after epoch."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        *,
        shard_index: int = 0,
        num_shards: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError(f"num_items={num_items}; the dataset is empty")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index={shard_index}; expected in [0, {num_shards})")
        per_shard = len(range(shard_index, num_items, num_shards))
        if batch_size < 1 or batch_size > per_shard:
            raise ValueError(
                f"batch_size={batch_size}; expected 1 <= batch_size <= {per_shard}"
                f" (items of shard {shard_index} of {num_shards})"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.epoch = 0
        self.position = 0  # Next index into this shard's share of the epoch.
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return permutation[self.shard_index :: self.num_shards]

    def next(self) -> list[int]:
        """The next `batch_size` item indices; a batch never spans two epochs."""
        if self.position + self.batch_size > len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_order(self.epoch)
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [int(i) for i in batch]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad iterator state {state!r}; expected epoch and position") from e
        self.epoch, self.position = epoch, position
        self._order = self._epoch_order(epoch)
