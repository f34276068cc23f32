# foveal: the README's commands. `make serve` runs the service, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

.PHONY: serve test lint gpu-check selfcheck clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

serve: $(VENV)/.installed
	$(BIN)/foveal selfcheck

selfcheck: $(VENV)/.installed
	$(BIN)/foveal selfcheck

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Kernels run in Triton's interpreter on the CPU: correctness only, never speed.
test: lint
	TRITON_INTERPRET=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# On a lent GPU machine (torch and triton preinstalled, no network): GPU tests and benchmarks.
gpu-check:
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
