"""Launching golfjax experiments: XManager work units on this machine or Cloud TPU.

`launch/jobs.py` turns a config's `get_sweep()` into job specs (pure functions,
no XManager needed); `launch/xm_launch.py` is the command line that prints them
(`--dry_run`) or launches them through XManager.
"""
