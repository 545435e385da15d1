"""A job of two process groups: learner and rollout (golfjax/process_groups.py splits them).

  channel.py        `CollectiveChannel`: weights learner -> rollout group and
                    rollouts rollout group -> learner, inside JAX
  remote.py         the learner's asynchronous schedule over that channel
  rollout_group.py  what the rollout group's processes run
"""
