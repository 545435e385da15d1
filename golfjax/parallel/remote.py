"""The learner group's asynchronous schedule when the rollout group is other processes.

`RemoteRolloutSchedule` is golfjax/loops/async_rollout.py's
`AsyncRolloutSchedule` with its producer thread replaced by the rollout
group's processes (golfjax/parallel/rollout_group.py) behind a
`CollectiveChannel`: it publishes the weights every `schedule.sync_every`
steps (the first time with the data position the producer starts from) and
trains the rollouts the channel delivers, in order. A checkpoint needs no
pause: the data position it saves is the one after the last rollout the
learner took, so what was in flight is drawn again by a resumed run.
"""

from __future__ import annotations

from typing import Any

import jax

from golfjax import config as config_lib
from golfjax.loops import async_rollout
from golfjax.parallel import channel as channel_lib
from golfjax import process_groups as groups_lib
from golfjax.train.state import TrainState


def make_channel(cfg: config_lib.RunConfig, params_like: Any) -> channel_lib.CollectiveChannel:
    """The job's channel (every process of both groups makes one)."""
    split = groups_lib.ProcessGroups.split(jax.process_count(), cfg.schedule.rollout_processes)
    return channel_lib.CollectiveChannel(split, params_like)


class RemoteRolloutSchedule(async_rollout.AsyncRolloutSchedule):
    """The learner's side of a two-group job (`schedule.rollout_processes`).

    Args:
      channel: the job's `CollectiveChannel`.
      **kwargs: `AsyncRolloutSchedule`'s (its worker source and mesh unused).
    """

    def __init__(self, cfg: config_lib.ScheduleSection, *, channel: channel_lib.CollectiveChannel,
                 **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self._remote = channel
        self._started = False

    @property
    def channel(self) -> channel_lib.CollectiveChannel:
        return self._remote

    def _start(self, state: TrainState, data: Any) -> None:
        self._data, self._consumed_data_state = data, data.state()
        self._channel, self._worker = self._remote, self  # `_worker` set: nothing to start again.
        self._publish(state)

    def _publish(self, state: TrainState) -> None:
        self._published = int(state.step)
        note = None if self._started else {"data": self._consumed_data_state}
        self._channel.publish(state.params, self._published, note=note)
        self._started = True

    def _stop(self, report: bool = True) -> None:
        """The learner's data position back to just after the last rollout it took."""
        del report  # The rollout group's failures end the job (its processes exit).
        if self._data is not None:
            self._data.restore(self._consumed_data_state)

    def close(self) -> None:
        """Ends the rollout group's production."""
        self._stop()
        self._remote.close()

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close()
