"""A real foveal server on a loopback port per test session (pytest-xdist: per worker).

The server runs PyTorch's ops on the CPU (fast); tests that check the Triton interpreter path
ask for it on a tiny model themselves.
"""

from __future__ import annotations

import grpc
import pytest

from foveal.proto import rpc
from service_helpers import MAX_MESSAGE, MIB, MODELS_TOML, running


@pytest.fixture(scope="session")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo") / "models.toml"
    path.write_text(MODELS_TOML)
    return path


@pytest.fixture(scope="session")
def server(models_file):
    with running(models_file=str(models_file), max_message_bytes=MAX_MESSAGE) as s:
        yield s


@pytest.fixture(scope="session")
def channel(server):
    options = [("grpc.max_send_message_length", 64 * MIB),
               ("grpc.max_receive_message_length", 64 * MIB)]
    with grpc.insecure_channel(server.address, options=options) as ch:
        yield ch


@pytest.fixture
def features(channel):
    return rpc.FeatureServiceStub(channel)
