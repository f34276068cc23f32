"""Fixtures for the client tests: one real server on a loopback port and synthetic videos per
test session (per pytest-xdist worker)."""

from __future__ import annotations

import grpc
import pytest

from clients_helpers import MODELS_TOML, make_videos, start_server


@pytest.fixture(scope="session")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo") / "models.toml"
    path.write_text(MODELS_TOML)
    return path


@pytest.fixture(scope="session")
def server(models_file):
    running = start_server(models_file)
    yield running
    running.stop(grace=0.5)


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def client(server):
    from foveal.clients.client import FoveaClient

    with FoveaClient(server.address) as c:
        yield c


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"))
