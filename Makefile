# The two commands a new user runs (see README.md):
#   make demo   runs the project's main job
#   make test   runs the whole test suite
# Both create .venv with `python3 -m venv` when it is missing and install what
# they need into it; nothing relies on packages installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Reinstall when the package metadata changes.
STAMP  := $(VENV)/.golfjax-test-installed

.PHONY: venv test test-fast demo bazel-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# tpu-aot: the tests compile programs for a TPU slice (golfjax/aot/).
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -e '.[test,tpu-aot]'
	touch $(STAMP)

venv: $(STAMP)

# The README's test command; .ci/run calls it. Slow tests run too.
test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=30 tests

# Everything except tests marked slow, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

# DEMO_ARGS="--seed 1" (or "--smoke") goes to golfjax.demo.
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m golfjax.demo $(DEMO_ARGS)

bazel-test: $(STAMP)
	bash tools/bazel_test.sh

# The sampler benchmark (benchmarks/sampler.py) against google-tunix and
# transformers. Those pin other versions than .venv's (tunix wants an older
# transformers), so they live in their own venv. BENCH_ARGS=--quick for a smoke run.
BENCH_VENV  ?= .venv-bench
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.golfjax-bench-installed
BENCH_ARGS  ?=

$(BENCH_STAMP): setup.py
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --upgrade pip
	$(BENCH_PY) -m pip install -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/sampler.py --out benchmarks/results/sampler.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) bazel-* .pytest_cache
