"""What happens between the sampler and the train step.

  rl.py              GRPO-style batch source (`GroupSource`) and held-out evaluation
  golf.py            GOLF's batch source (`GolfSource`): critiques, refinements, injection
  schedule.py        the synchronous rollout schedule (`RolloutSchedule`): k mini-batch
                     steps per rollout (staleness), for any loss
  async_rollout.py   the asynchronous schedule: a rollout producer, weight sync, throttle
  rollout_worker.py  the single-process channel and the producer's thread
  cold_start.py      the supervised cold start's batches (`ColdStart`)

The loss is chosen by `train.loss` (golfjax/losses, applied in golfjax/train/step.py);
golfjax/components.py builds these pieces and golfjax/train_loop.py runs them.
"""
