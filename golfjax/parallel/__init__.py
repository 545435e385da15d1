"""Several process groups in one JAX job.

  groups.py   the learner / rollout split of the job's processes, and each
              group's own process count, devices and collectives
  channel.py  `CollectiveChannel`: weights learner -> rollout group and
              rollouts rollout group -> learner, inside JAX
"""
