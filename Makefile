# foveal: the README's commands. `make serve` runs the service, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

.PHONY: serve proto test lint gpu-check selfcheck clean

# The tests need the dev extra; serving only foveal and its `serve` extra (dev includes it).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.serve-installed

$(VENV)/.serve-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[serve]'
	touch $@

# The service on its built-in models (gabor, motion-energy): gRPC on 127.0.0.1:8001, metrics on
# :8002. Flags and FOVEAL_* variables configure it: `$(BIN)/foveal serve --help`.
SERVE_ARGS ?=
serve: $(VENV)/.serve-installed
	$(BIN)/foveal serve $(SERVE_ARGS)

# Regenerate proto/'s committed *_pb2.py/.pyi from the .proto sources (the one place that adapts
# protoc's output: proto/generate.py). A test fails while they are out of date.
proto: $(VENV)/.installed
	$(BIN)/python -m foveal.proto.generate

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
