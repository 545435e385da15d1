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

# JAX's persistent compilation cache: the process that imports this first
# (pytest, or xdist's controller) picks the directory, and the xdist workers and
# the end-to-end tests' subprocesses inherit it, since they compile the same
# smoke-config programs many times over. Outside Bazel it persists across runs
# under ~/.cache (entries are keyed by program, options and JAX version); under
# Bazel (TEST_TMPDIR) it is a per-run directory removed when the run ends.
_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    if os.environ.get("TEST_TMPDIR"):
        import tempfile

        _CACHE_DIR = tempfile.mkdtemp(prefix="golfjax-test-jax-cache-",
                                      dir=os.environ["TEST_TMPDIR"])
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR or os.path.join(
        os.path.expanduser("~"), ".cache", "golfjax", "jax-compilation-cache-tests")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_numpy_rank_promotion", "raise")

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read absl flags; under pytest nobody
# parses them, so take their defaults.
flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session):
    # Only the process that made the cache directory removes it.
    if _CACHE_DIR:
        import shutil

        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
