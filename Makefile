# Two entry points: `make demo` (environment + a generation on the tiny checkpoint) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install; override for another build, e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
PROMPT ?= The sound of Brazilian samba drums with waves gently crashing in the background

.PHONY: demo test lint format clean

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
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

format: $(BIN)/audioldm2-fast
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
