"""Test harness: 8 simulated CPU devices, strict rank promotion.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""

import os

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    # A hung CPU collective fails the test in a minute instead of the job.
    "--xla_cpu_collective_call_terminate_timeout_seconds=60",
]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_numpy_rank_promotion", "raise")

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read absl flags; under pytest nobody
# parses them, so take their defaults.
flags.FLAGS.mark_as_parsed()
