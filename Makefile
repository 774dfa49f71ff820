# Two commands for a new user: `make up` (the dashboard) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: up test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole suite in two processes (pytest-xdist): many tests wait on a subprocess, a server or the browser,
# so a second process keeps the cores busier. Each process has its own embedded Valkey (tests/conftest.py).
# --dist loadfile runs a test file in one process, in order, so a module's shared fixture (a dashboard, a
# pool of workers, a trained run) is built once and the tests that build on each other's runs see them.
# --no-loadscope-reorder: files go out in collection order, which tests/conftest.py sets by tier, the slowest
# first (pytest-xdist's own order, the files with the most tests first, left the one-test browser flow to
# the end, with the other process idle for 11-25 s). Slower, measured (docs/benchmarks.md): a third process.
# Bytecode is written (an environment may turn it off): pytest then rewrites each test module's asserts once,
# not in each process of every run (~5 s of collection per process here).
test test-fast: export PYTHONDONTWRITEBYTECODE :=
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=10

# The unit tier: no servers, no browser, no training beyond a few steps (tiers: tests/conftest.py).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not (browser or faults or workers or redis or train or science)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

up: $(STAMP)
	$(VENV)/bin/codash up

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
