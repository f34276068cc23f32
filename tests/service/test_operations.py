"""Operations over real connections: health, reflection, metrics, request ids and logs,
bearer tokens, TLS and mutual TLS."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2 as std_health
from grpc_health.v1 import health_pb2_grpc as std_health_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.logs import JsonFormatter
from pki import make_pki
from service_helpers import raw_image, running

SMALL_MODEL = """
[[models]]
name = "tiny"
kind = "gabor"
[models.input]
size = [16, 16]
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "models.toml"
    path.write_text(SMALL_MODEL)
    return str(path)


def _tiny_request() -> pb.ExtractImageRequest:
    return pb.ExtractImageRequest(model="tiny", images=[raw_image(np.zeros((16, 16, 3),
                                                                           np.uint8))])


def test_health_answers_for_the_server_services_and_each_model(server, channel):
    """Checked with grpcio-health-checking's own client, independent of our protocol copy."""
    health = std_health_grpc.HealthStub(channel)
    for name in ("", "gabor", "motion", "foveal.v1.FeatureService",
                 "inference.GRPCInferenceService"):
        reply = health.Check(std_health.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == std_health.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(std_health.HealthCheckRequest(service="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(std_health.HealthCheckRequest(service="gabor"), timeout=5)
    assert next(watch).status == std_health.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_and_describes_the_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"foveal.v1.FeatureService", "inference.GRPCInferenceService",
            "grpc.health.v1.Health"} <= services
    file = database.FindFileContainingSymbol("foveal.v1.FeatureService")
    assert file.package == "foveal.v1"
    methods = {m.name for s in file.service if s.name == "FeatureService" for m in s.method}
    assert methods == {"ListModels", "GetModel", "ExtractImage", "ExtractClips"}


def test_metrics_endpoint_serves_prometheus_text(server, features):
    features.ExtractImage(pb.ExtractImageRequest(model="gabor-small", images=[
        raw_image(np.zeros((32, 32, 3), np.uint8))]))
    with pytest.raises(grpc.RpcError):
        features.GetModel(pb.GetModelRequest(name="unknown-model-name"))
    url = f"http://127.0.0.1:{server.metrics_port}"
    with urllib.request.urlopen(url + "/metrics") as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    assert 'foveal_requests_total{method="ExtractImage",model="gabor-small"}' in text
    assert 'foveal_request_failures_total{code="NOT_FOUND",method="GetModel",model=""}' in text
    for family in ("foveal_queue_seconds_bucket", "foveal_compute_seconds_bucket",
                   "foveal_batch_size_bucket", "foveal_queue_depth", "foveal_request_seconds"):
        assert family in text
    assert "unknown-model-name" not in text  # clients cannot create label values
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url + "/other")
    assert caught.value.code == 404


def test_request_ids_are_echoed_and_logged(features, caplog):
    with caplog.at_level(logging.INFO, logger="foveal"):
        call = features.ExtractImage.with_call
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.ExtractImageRequest(model="gabor-small"),
                 metadata=(("x-request-id", "trace-42"),))
    assert ("x-request-id", "trace-42") in caught.value.initial_metadata()
    records = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id")
               == "trace-42"]
    assert records and records[0].fields["code"] == "INVALID_ARGUMENT"
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["event"] == "request failed" and line["request_id"] == "trace-42"
    assert "at least one image" in line["message"]
    _, call_info = features.ExtractImage.with_call(pb.ExtractImageRequest(
        model="gabor-small", images=[raw_image(np.zeros((32, 32, 3), np.uint8))]))
    generated = dict(call_info.initial_metadata())["x-request-id"]
    assert len(generated) == 16


def test_bearer_token_guards_everything_but_health(tiny_models):
    with running(models_file=tiny_models, auth_token="s3cret") as s, \
            grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ExtractClips(iter([]), timeout=5))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer s3cret"),)
        assert stub.ExtractImage(_tiny_request(), metadata=good, timeout=30).model == "tiny"
        health = std_health_grpc.HealthStub(channel)
        assert health.Check(std_health.HealthCheckRequest(), timeout=5).status == \
            std_health.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for localhost and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _secure_channel(port: int, files: dict, client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files["ca"],
        private_key=files["client_key"] if client_cert else None,
        certificate_chain=files["client_cert"] if client_cert else None)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_serves_encrypted_and_refuses_plaintext(tiny_models, pki):
    files, paths = pki
    with running(models_file=tiny_models, host="127.0.0.1", tls_cert=paths["server_cert"],
                 tls_key=paths["server_key"]) as s:
        with _secure_channel(s.port, files, client_cert=False) as channel:
            reply = rpc.FeatureServiceStub(channel).ExtractImage(_tiny_request(), timeout=30)
            assert list(reply.images[0].features[0].tensor.shape) == [96, 2, 2]
        with grpc.insecure_channel(s.address) as plain, pytest.raises(grpc.RpcError) as caught:
            rpc.FeatureServiceStub(plain).ListModels(pb.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tiny_models, pki):
    files, paths = pki
    with running(models_file=tiny_models, tls_cert=paths["server_cert"],
                 tls_key=paths["server_key"], tls_client_ca=paths["ca"]) as s:
        with _secure_channel(s.port, files, client_cert=True) as channel:
            assert rpc.FeatureServiceStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=10).models[0].name == "tiny"
        with _secure_channel(s.port, files, client_cert=False) as channel, \
                pytest.raises(grpc.RpcError) as caught:
            rpc.FeatureServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
