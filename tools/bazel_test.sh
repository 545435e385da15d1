#!/usr/bin/env bash
# `make bazel-test`: runs every Bazel test target (`bazel test //...`) offline, under
# the project's .venv, which `make` creates first; the slow end-to-end tests only
# with GOLFJAX_BAZEL_SLOW=1. Extra arguments go to
# `bazel test` in place of `//...`, e.g. `bash tools/bazel_test.sh //:build_test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
  echo "tools/bazel_test.sh: no .venv/bin/python; run 'make bazel-test'." >&2
  exit 1
fi

if ! command -v bazel >/dev/null; then
  # Debian's bazel-bootstrap: Bazel 4.2.3, which needs no download of its own and
  # pulls in a JDK and a C toolchain. A fresh machine may have no package lists yet,
  # hence the update on failure.
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y bazel-bootstrap \
    || { $sudo apt-get update && $sudo apt-get install -y bazel-bootstrap; }
fi

# The interpreter: Bazel 4 runs py_test under its autodetecting Python toolchain,
# which executes the first `python3` on the test's PATH, and .bazelrc passes this
# PATH through (--test_env=PATH). Invoked by its .venv path, that interpreter uses
# the venv's packages. (--python_path would not do: Bazel ignores it while Python
# toolchains are enabled, the default since 0.27; and a py_runtime in a BUILD file
# would need this machine's absolute path.)
# The slow end-to-end tests (pytest marker `slow`) run under `make test`; here
# they are deselected unless GOLFJAX_BAZEL_SLOW=1 (tests/pytest_main.py).
fast_only=1
if [[ "${GOLFJAX_BAZEL_SLOW:-0}" == 1 ]]; then fast_only=0; fi
PATH="$PWD/.venv/bin:$PATH" exec bazel test --test_env=GOLFJAX_FAST_ONLY="$fast_only" "${@:-//...}"
