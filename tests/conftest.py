"""Test set-up: kernels run in Triton's interpreter unless a GPU is present.

TRITON_INTERPRET must be set before foveal.kernels is first imported (triton.jit reads it when
the kernels are decorated), so it is set here, ahead of every test module.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
