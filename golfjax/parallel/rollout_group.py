"""What the rollout group's processes run in a job with two process groups.

With `schedule.rollout_processes = R` (and `schedule.async_rollout`), the last
R processes of the job never train: `golfjax.train_loop.train` hands them to
`serve`, which builds the run's batch source on the group's own devices and
produces rollouts with golfjax/loops/async_rollout.py's `RolloutProducer`
(the same producer a single-process run drives on a thread) until the learner
closes the channel. Weights arrive, and rollouts leave, only through
golfjax/parallel/channel.py.

The rollout group writes nothing into the work directory: the learner owns
the checkpoints. The learner's first weights carry the data position to start
from (a resumed run's checkpointed position, which already accounts for every
rollout the learner trained), so rollouts that were in flight when the run
stopped are drawn and generated again, never lost or trained twice.
"""

from __future__ import annotations

import contextlib
import threading

import jax

from golfjax import components as components_lib
from golfjax import config as config_lib
from golfjax.loops import async_rollout
from golfjax.parallel import channel as channel_lib


def serve(cfg: config_lib.RunConfig, workdir: str) -> None:
    """Produces rollouts for the learner group until it closes the channel."""
    c, params = components_lib.build(cfg, workdir)
    del params  # The learner sends the weights.
    channel = c.schedule.channel  # The job's channel (components.build makes it on every process).
    channel.latest()  # The first weights, and where the data starts.
    data = c.rl_data()
    data.restore(channel.note["data"])
    producer = async_rollout.RolloutProducer(
        cfg.schedule, channel, c.source, c.train_problems, data,
        jax.random.fold_in(jax.random.PRNGKey(cfg.seed), async_rollout.ASYNC_STREAM), score=None,
        device_lock=contextlib.nullcontext())
    never = threading.Event()
    with contextlib.suppress(channel_lib.ChannelClosed):
        while True:
            producer.produce_one(never)
