# Two entry points: `make demo` (environment + a generation on the tiny checkpoint) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install; override for another build, e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
PROMPT ?= The sound of Brazilian samba drums with waves gently crashing in the background

.PHONY: demo test lint format clean device-wheels device-check device-results

$(BIN)/audioldm2-fast: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/audioldm2-fast
	$(BIN)/audioldm2-fast checkpoint=tiny prompt="$(PROMPT)" negative_prompt="Low quality." num_waveforms=2

test: $(BIN)/audioldm2-fast
	$(BIN)/python -m pytest

lint: $(BIN)/audioldm2-fast
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: $(BIN)/audioldm2-fast
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache

# GPU measurements (benchmarks/README.md). Here: `make device-wheels`. On the GPU machine, carrying .whl:
# `make device-check COMMIT=<sha>` (no venv, no index: the machine's python3 and the wheels). Back here:
# `make device-results RUN=<its OUT>`. `make device-check DRY=1` runs the same sequence on this CPU.
# Variables: OUT, DRY=1, PROFILE=1, COMMIT, PYTHON, BUDGET (s), STEPS (ids), LIMITS ("id=s ..."), WORK, HALF.
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
CHECK_PYTHON := $(if $(filter command line environment,$(origin PYTHON)),$(PYTHON),)

device-wheels:
	PYTHON="$(PYTHON)" bash benchmarks/device_wheels.sh

device-check:
	OUT="$(OUT)" DRY="$(DRY)" PROFILE="$(PROFILE)" COMMIT="$(COMMIT)" PYTHON="$(CHECK_PYTHON)" BUDGET="$(BUDGET)" \
	  STEPS="$(STEPS)" LIMITS="$(LIMITS)" WORK="$(WORK)" HALF="$(HALF)" bash benchmarks/device_check.sh

device-results:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) benchmarks/device_results.py $(if $(RUN),"$(RUN)",--table-only)
