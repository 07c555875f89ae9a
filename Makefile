# headwater: every check has one entry point here; CI runs `make test` (.ci/run).
#
#   make demo        venv + headwater, scaffold demo/, run its pipeline, list its datasets
#   make test        dev extras, test services (Azurite, databases, brokers), lint, types, tests
#   make lint        ruff          make typecheck   mypy (strict, config in pyproject.toml)
#   make pytest      the tests only, against services already running
#   make services    start what the tests need that is not answering (scripts/start-services.sh)
#   make bench       both benchmarks (BENCH_ROWS=2000000; see bench/README.md)
#   make clean       caches, build output, demo/, bench data; `make distclean` also .venv

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip --disable-pip-version-check
HEADWATER := $(BIN)/headwater
DEMO_DIR ?= demo
DEMO_PIPELINE ?= orders
BENCH_ROWS ?= 2000000
PYTEST_ARGS ?=

# The first Python 3.11+ on PATH, for a fresh machine; PYTHON=... overrides.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)

.PHONY: help demo install install-dev test lint typecheck pytest services stop-azurite \
	bench bench-files bench-overhead bench-datasets bench-triggers clean distclean

help:
	@sed -n '3,9s/^# \{0,1\}//p' Makefile

$(PY):
	@test -n "$(PYTHON)" || { echo "make: need Python 3.11 or newer on PATH (or PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q -e .

install-dev: $(PY)
	$(PIP) install -q -e '.[dev]'

# ---------------------------------------------------------------------------- demo

demo: install
	@if [ -f $(DEMO_DIR)/headwater.yaml ]; then \
		echo "reusing $(DEMO_DIR)/ (delete it for a fresh scaffold)"; \
	else \
		$(HEADWATER) init $(DEMO_DIR); \
	fi
	$(HEADWATER) run $(DEMO_PIPELINE) --project $(DEMO_DIR) --log-format human
	$(HEADWATER) datasets --project $(DEMO_DIR)
	@echo
	@echo "Start the server (triggers, runner, API):  $(HEADWATER) serve --project $(DEMO_DIR)"
	@echo "         then open http://127.0.0.1:8765/ (the web UI; the API docs are at /api/docs)"

# ---------------------------------------------------------------------------- checks

# All three run even when one fails, so one report shows every problem; tests come last.
test: install-dev services
	@rc=0; \
	$(MAKE) lint || rc=1; \
	$(MAKE) typecheck || rc=1; \
	$(MAKE) pytest || rc=1; \
	exit $$rc

lint: $(PY)
	$(BIN)/ruff check src tests

typecheck: $(PY)
	$(BIN)/mypy

# Every test, the slow and the service ones included.
pytest: $(PY)
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# `all` includes Debian's chromium for the browser tests (pytest -m browser).
services:
	bash scripts/start-services.sh all

stop-azurite:
	bash scripts/start-services.sh stop-azurite

# ---------------------------------------------------------------------------- bench

bench: bench-files bench-overhead bench-datasets bench-triggers

bench-datasets: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/datasets_ml.py --rows $(BENCH_ROWS)

bench-triggers: install-dev
	$(PY) bench/trigger_latency.py

bench-files: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/files_to_dataset.py --rows $(BENCH_ROWS)

bench-overhead: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/overhead.py

# ---------------------------------------------------------------------------- clean

clean:
	rm -rf $(DEMO_DIR) bench/.data build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o \
		\( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 rm -rf

distclean: stop-azurite clean
	rm -rf $(VENV) node_modules .azurite
