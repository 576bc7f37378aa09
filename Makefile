# drivelab: `make run` runs the main job, `make test` the tests. Both create .venv/ and install on their own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SCENES ?= synthetic
RUN_DIR ?= runs/latest
STACK_SECONDS ?= 45
REAL ?=
PYTEST_ARGS ?=
export JAX_PLATFORMS ?= cpu
# One persistent XLA compile cache shared by test workers, the stack's processes and later runs; stable hashing so
# separate processes produce the same cache keys.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export PYTHONHASHSEED ?= 0
export PROMETHEUS_DISABLE_CREATED_SERIES := True

.PHONY: install run test test-slow test-all bench up down lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: install
	$(BIN)/drivelab demo --scenes $(SCENES) --out $(RUN_DIR) --stack-seconds $(STACK_SECONDS) $(if $(REAL),--real $(REAL))

# The suite: everything but the tests marked slow (learning curves, whole-stack runs, real-scene expert sweeps).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --timeout 900 -m "not slow" $(PYTEST_ARGS)

# The slow tests alone; CI (.ci/run) runs them after `make test`.
test-slow: install
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --timeout 900 -m slow $(PYTEST_ARGS)

test-all: test test-slow

bench: install
	$(BIN)/drivelab bench sim --quick --out benchmarks/results/sim.json
	$(BIN)/drivelab bench wire --out benchmarks/results/wire.json
	$(BIN)/drivelab bench stack --out benchmarks/results/stack.json
	$(BIN)/drivelab bench memory --out benchmarks/results/memory.json
	$(BIN)/drivelab bench learn --quick --out-dir benchmarks/results

up: install
	$(BIN)/drivelab up

down:
	-pkill -f "drivelab up" || true

lint: install
	$(BIN)/python -m compileall -q shared services tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
