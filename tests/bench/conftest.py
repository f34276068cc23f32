"""Shared fixtures for the benchmark harness tests: one interpreter run of the smoke suite.

The tests/conftest.py one level up has already switched on Triton's interpreter when there is
no GPU, before anything imports foveal.kernels.
"""

from __future__ import annotations

import pytest
import torch

from foveal.bench.harness import Settings, run_benchmark
from foveal.bench.report import to_json
from foveal.bench.workloads import load_workloads, select


@pytest.fixture(scope="session")
def smoke_workloads():
    return select(load_workloads(), suite="smoke")


@pytest.fixture(scope="session")
def smoke_report(smoke_workloads):
    """Every smoke workload, forward and backward, on the CPU through the interpreter."""
    torch.manual_seed(0)
    settings = Settings(device=torch.device("cpu"), forward=True, backward=True)
    return run_benchmark(smoke_workloads, settings)


@pytest.fixture(scope="session")
def smoke_document(smoke_report):
    return to_json(smoke_report)


@pytest.fixture(scope="session")
def small_document(smoke_workloads):
    """A quick forward-only run of two smoke workloads, for tests of what renders results."""
    chosen = select(smoke_workloads, names=["smoke.conv1d", "smoke.conv2d.grouped"])
    return to_json(run_benchmark(chosen, Settings(device=torch.device("cpu"))))
