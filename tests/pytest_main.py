"""Runs one pytest file as a Bazel py_test: `pytest_main.py tests/x/y_test.py`.

Bazel runs this from the runfiles tree, which holds pytest.ini, so pytest's rootdir
and conftest.py discovery match a plain `pytest` run from the repository root.
"""

from __future__ import annotations

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    # Python put the directory of this file, symlinks resolved, on sys.path: that is
    # the source tree's tests/, outside the runfiles. Drop it so that a test imports
    # only what its Bazel target declares.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]

    # Bazel sets no HOME, and libraries that cache under ~ (Hugging Face, torch)
    # then fail; the rest of the file system is read-only in the sandbox. The
    # test's own scratch directory stands in.
    if "TEST_TMPDIR" in os.environ:
        os.environ.setdefault("HOME", os.environ["TEST_TMPDIR"])

    # The runfiles tree is read-only, so no .pytest_cache.
    args = argv + ["-p", "no:cacheprovider"]
    # Per-test-case results in Bazel's test.xml rather than one case per file.
    if "XML_OUTPUT_FILE" in os.environ:
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    # tools/bazel_test.sh sets this unless asked for the slow end-to-end tests,
    # which `make test` runs; a file of only slow tests then has nothing to run.
    fast_only = os.environ.get("GOLFJAX_FAST_ONLY") == "1"
    if fast_only:
        args += ["-m", "not slow"]
    code = int(pytest.main(args))
    if fast_only and code == pytest.ExitCode.NO_TESTS_COLLECTED:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
