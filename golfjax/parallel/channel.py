"""The learner <-> rollout channel between two process groups of one JAX job.

The asynchronous producer (golfjax/loops/) and the learner talk only through
a channel with four calls:

    learner:  publish(params, version)   weights to the rollout group
              get(timeout=None) -> item  the next finished rollout
    rollout:  latest() -> (params, version)  the newest weights it received
              put(item)                  a finished rollout for the learner
              note                       what the learner sent with them

`CollectiveChannel` is the channel between process groups
(golfjax/process_groups.py). Nothing travels through files, sockets or
servers of golfjax's own: weights and rollouts cross inside JAX, in jitted
exchanges over a mesh of one device per process of the job, and the only
signals go through JAX's distributed key-value store (the coordination service
`jax.distributed.initialize` starts):

1. The learner asks: it writes request n (`weights`, `rollouts` or `stop`)
   and waits for the rollout group's primary to write that it will join.
2. The rollout group answers between units of work, whenever its producer
   calls `latest` or `put`: a `weights` request at once, a `rollouts`
   request once it has a finished rollout to send (so the learner waits, not
   spins, while nothing is ready).
3. Both groups run the same exchange programs: a header (payload size and
   weights version), for `weights` the parameters (learner -> rollout; the
   rollout side sends zeros of the same shapes), then the rollouts (rollout
   -> learner) and the learner's note, each pickled to bytes and padded to a
   power of two; every process receives the row of the other group's primary.

Every process of a group holds the same payload (golfjax's host work is
identical on a group's processes), so each receives a full copy on its first
device. Weights therefore cross as a full copy per process, not shard to
shard: simple and exact, and the cost a 0.5B-8B model can afford between
hosts; sharded transfers between matching meshes are future work.

`wait_s` accumulates the time this side spent waiting for the other.
"""

from __future__ import annotations

import collections
import functools
import pickle
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from golfjax import process_groups as groups_lib
from golfjax import sharding as sharding_lib

WEIGHTS, ROLLOUTS, STOP = "weights", "rollouts", "stop"
_KINDS = (WEIGHTS, ROLLOUTS, STOP)
_POLL_S = 0.005
_READY_TIMEOUT_MS = 24 * 60 * 60 * 1000  # The learner waits as long as a rollout takes.


class ChannelClosed(RuntimeError):
    """The learner stopped the channel; the rollout side's producer ends."""


def abort(name: str = "golfjax-channel") -> None:
    """Ends the rollout group's production from a learner that failed before
    (or without) closing its channel; the rollout side raises `ChannelClosed`."""
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None and groups_lib.is_primary():
        client.key_value_set(f"{name}/abort", STOP, allow_overwrite=True)


def _padded(n: int) -> int:
    return max(1024, 1 << (max(n, 1) - 1).bit_length())


class CollectiveChannel:
    """A channel between the learner and the rollout group of one JAX job.

    Args:
      groups: the job's split (`ProcessGroups`); this process's role follows.
      params_like: a pytree with the parameters' shapes and dtypes (arrays or
        `jax.ShapeDtypeStruct`s): the rollout side sends zeros of these.
      name: the key prefix of this channel's requests.
    """

    def __init__(self, groups: groups_lib.ProcessGroups, params_like: Any, name: str = "golfjax-channel") -> None:
        from jax._src import distributed

        self._client = distributed.global_state.client
        if self._client is None:
            raise RuntimeError("CollectiveChannel needs jax.distributed.initialize()")
        self.groups, self.name = groups, name
        self.role = groups.role(jax.process_index())
        first: dict[int, jax.Device] = {}
        for d in jax.devices():
            first.setdefault(d.process_index, d)
        self._mesh = Mesh(np.array([first[p] for p in range(jax.process_count())]), ("p",))
        self._mine = first[jax.process_index()]
        # Every process receives the row of the other group's primary.
        source = [groups.rollout[0] if groups.role(p) == groups_lib.LEARNER else groups.learner[0]
                  for p in range(jax.process_count())]
        self._source = np.asarray(source, np.int32)
        self._template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_like)
        self._n = 0
        self.wait_s = 0.0
        self._inbox: collections.deque[Any] = collections.deque()  # Learner.
        self._outbox: list[Any] = []  # Rollout side.
        self._params: Any = None
        self._version: int | None = None
        self._closed = False
        self.note: Any = None  # Rollout side: the note of the newest weights.

    # ------------------------------------------------------------ learner side

    def publish(self, params: Any, version: int, note: Any = None) -> None:
        """Sends `params` (version `version`) and `note` (anything picklable,
        e.g. where the data starts) to the rollout group; receives whatever
        finished rollouts it held."""
        self._ask(WEIGHTS)
        self._exchange(WEIGHTS, params=params, version=version, note=note)

    def get(self, timeout: float | None = None) -> Any:
        """The next finished rollout (waits for the rollout group to send one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no rollout arrived within {timeout} s")
            self._ask(ROLLOUTS)
            self._exchange(ROLLOUTS)
        return self._inbox.popleft()

    def close(self) -> None:
        """Tells the rollout group to stop (its next `latest`/`put` raises `ChannelClosed`)."""
        if self.role == groups_lib.LEARNER and not self._closed:
            self._closed = True
            if groups_lib.is_primary():
                self._client.key_value_set(f"{self.name}/{self._n}", STOP)
            self._n += 1

    def _ask(self, kind: str) -> None:
        """Request n (written by the learner's primary), once the rollout group will join."""
        n = self._n
        start = time.monotonic()
        if groups_lib.is_primary():
            self._client.key_value_set(f"{self.name}/{n}", kind)
        self._client.blocking_key_value_get(f"{self.name}/{n}/ready", _READY_TIMEOUT_MS)
        self.wait_s += time.monotonic() - start

    # ------------------------------------------------------------ rollout side

    def latest(self) -> tuple[Any, int]:
        """The newest weights received (waits for the first); answers a pending request."""
        self._serve(wait=lambda: self._version is None)
        return self._params, self._version

    def put(self, item: Any) -> bool:
        """Queues `item` for the learner; answers a pending request. True: the
        item was taken (`ChannelClosed` once the learner has stopped)."""
        self._outbox.append(item)
        self._serve(wait=lambda: False)
        return True

    def depth(self) -> int:
        """Items waiting on this side: the learner's inbox, or the rollout side's outbox."""
        return len(self._inbox) if self.role == groups_lib.LEARNER else len(self._outbox)

    def _serve(self, wait: Callable[[], bool]) -> None:
        """Answers requests while they can be answered, and waits while `wait()`."""
        start = time.monotonic()
        while True:
            if self._closed:
                raise ChannelClosed("the learner closed the channel")
            kind = self._pending()
            if kind == STOP:
                self._closed = True
                continue
            if kind == WEIGHTS or (kind == ROLLOUTS and self._outbox):
                if groups_lib.is_primary():
                    self._client.key_value_set(f"{self.name}/{self._n}/ready", "1")
                self._exchange(kind)
                continue
            if not wait():
                break
            time.sleep(_POLL_S)
        self.wait_s += time.monotonic() - start

    def _pending(self) -> str | None:
        """Request n if it has been made: what the rollout group's primary saw,
        so that every process of the group answers it at the same point."""
        code = 0
        if groups_lib.is_primary():
            for key in (f"{self.name}/abort", f"{self.name}/{self._n}"):
                try:
                    code = _KINDS.index(self._client.key_value_try_get(key)) + 1
                    break
                except Exception:  # noqa: BLE001  (not there yet: the store says so by raising)
                    code = 0
        code = int(groups_lib.broadcast(np.int32(code)))
        return _KINDS[code - 1] if code else None

    # ------------------------------------------------------------ both

    def _exchange(self, kind: str, params: Any = None, version: int = -1, note: Any = None) -> None:
        """Runs exchange n's programs (the same on every process of the job)."""
        learner = self.role == groups_lib.LEARNER
        payload = pickle.dumps(note if learner else self._outbox, protocol=pickle.HIGHEST_PROTOCOL)
        header = self._swap(np.asarray([len(payload), version], np.int64))
        if kind == WEIGHTS:
            tree = (self._local_copy(params) if learner else
                    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=self._mine), self._template))
            received = self._swap(tree)
            if not learner:
                self._params, self._version = received, int(header[1])
        size = _padded(max(len(payload), int(header[0])))
        data = np.zeros(size, np.uint8)
        data[:len(payload)] = np.frombuffer(payload, np.uint8)
        data = np.asarray(self._swap(data))
        received = pickle.loads(data[:int(header[0])].tobytes())
        if learner:
            self._inbox.extend(received)
        else:
            self._outbox = []
            if kind == WEIGHTS:
                self.note = received
        self._n += 1

    def _local_copy(self, tree: Any) -> Any:
        """A full copy of every leaf of `tree` on this process's first device
        (leaves split over several processes gathered in one program)."""
        leaves, treedef = jax.tree.flatten(tree)
        leaves = [next(s.data for s in x.addressable_shards if s.device == self._mine)
                  if isinstance(x, jax.Array) and not x.is_fully_addressable else x
                  for x in sharding_lib.replicate_split_leaves(leaves)]
        return jax.tree.unflatten(treedef, [jax.device_put(x, self._mine) for x in leaves])

    def _swap(self, tree: Any) -> Any:
        """Every process's `tree` in, the other group primary's `tree` out (on this
        process's first device)."""
        sharding = NamedSharding(self._mesh, PartitionSpec("p"))
        count = jax.process_count()

        def to_global(x: Any) -> jax.Array:
            x = jax.device_put(x, self._mine)
            return jax.make_array_from_single_device_arrays((count,) + x.shape, sharding, [x[None]])

        out = _gather_rows(sharding, tuple(self._source.tolist()))(jax.tree.map(to_global, tree))
        return jax.tree.map(lambda a: a.addressable_data(0)[0], out)


@functools.lru_cache(maxsize=None)
def _gather_rows(sharding: NamedSharding, source: tuple[int, ...]) -> Any:
    index = np.asarray(source, np.int32)
    return jax.jit(lambda tree: jax.tree.map(lambda a: a[index], tree), out_shardings=sharding)

