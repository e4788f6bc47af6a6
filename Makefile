# The two commands: `make run` (the default experiment) and `make test` (the test suite).
# Both create .venv if missing, install torch first (CPU wheel by default; set TORCH_SPEC for
# GPU machines, e.g. TORCH_SPEC="torch==2.13.0 --index-url ..."), install the project, fetch the
# offline assets (once), then run.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
RUN_ARGS ?=
REPORT_ARGS ?= --write

.PHONY: run test setup assets lint report engines

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

assets: setup
	$(BIN)/python -m harness.assets

run: assets
	$(BIN)/harness experiment=quick $(RUN_ARGS)

# llama.cpp (the `engines` extra) for eval.engine=llamacpp and its tests: built once from the
# sdist with the system compiler (no prebuilt wheel loads on older glibc); pip caches the wheel.
engines: setup
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
	  CMAKE_ARGS="-DLLAVA_BUILD=OFF $(CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/python -m pip install --quiet -e ".[dev,engines]"

test: assets
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check harness tests benchmarks

report: setup
	$(BIN)/harness report $(REPORT_ARGS)
