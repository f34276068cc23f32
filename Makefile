# foveal: the README's commands. `make serve` runs the service, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

.PHONY: serve proto test lint compile-gate compile-check gpu-check selfcheck clean

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

# Triton's real compiler on this CPU: the kernels of a few real layers (workloads tagged
# compile-gate) for sm_90 and sm_80 must compile, fit shared memory, use tensor cores in
# fp16/bf16 and never spill (`foveal compilecheck --help`).
compile-gate: $(VENV)/.installed
	$(BIN)/foveal compilecheck --quick

# Every benchmark workload's kernels for sm_90 and sm_80, kept under bench/results/compile/.
# TRITON=3.6.0 checks with that Triton (the lent GPU machines'), installed beside the
# virtual environment's own in .triton-3.6.0/ and put first on the path.
TRITON ?=
COMPILE_CHECK_ARGS ?=
TRITON_OVERLAY := $(if $(TRITON),$(CURDIR)/.triton-$(TRITON))
compile-check: $(VENV)/.installed
ifneq ($(TRITON),)
	test -d $(TRITON_OVERLAY)/triton || \
		$(BIN)/python -m pip install --no-deps --target $(TRITON_OVERLAY) triton==$(TRITON)
endif
	PYTHONPATH=$(TRITON_OVERLAY) $(BIN)/foveal compilecheck --save $(COMPILE_CHECK_ARGS)

# Kernels run in Triton's interpreter on the CPU: correctness only, never speed.
test: lint compile-gate
	TRITON_INTERPRET=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# On a lent GPU machine (torch and triton preinstalled, no network): the kernels checked,
# compared with the compile check and timed in priority order inside GPU_CHECK_BUDGET_S
# (default 480 s); `bash bench/gpu_check.sh --plan` shows the plan. Log and results under $OUT.
# BENCH_SUITE=smoke runs the same plan on a CPU (Triton's interpreter, timings meaningless).
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) -m pip install --no-deps --no-build-isolation -e .
	PYTHON=$(GPU_PYTHON) bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) .triton-* *.egg-info .pytest_cache .ruff_cache .hypothesis
