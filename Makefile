# swarmq developer commands. `make demo` sets up .venv and runs the offline demo;
# `make test` runs the test suite (PostgreSQL and Redis on 127.0.0.1 for the server tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/swarmq: pyproject.toml
	$(PY) -m venv $(VENV)
	# Pinned: on machines with a local CPU wheel this installs in seconds instead of pulling CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: setup demo test lint
setup: $(BIN)/swarmq

demo: setup
	$(BIN)/swarmq demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check swarmq tests benchmarks migrations
	$(BIN)/lint-imports
	$(BIN)/mypy
