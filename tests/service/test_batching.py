"""The dynamic batcher over real connections: batching, overload, deadlines, cancellation,
failing batches, and health during a long batch."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.proto.grpc.health.v1 import health_pb2
from foveal.proto.inference import grpc_service_pb2 as inference_pb
from foveal.service.models import InputSpec, OutputSpec, ServedModel
from foveal.service.repository import BatchPolicy
from service_helpers import raw_image, running, wait_until


class ProbeModel(ServedModel):
    """Returns each item's mean pixel; records every batch; can hold a batch until released,
    and fails any batch containing an all-white image."""

    kind, description, weights = "probe", "test model", "none"

    def __init__(self, name: str = "probe"):
        super().__init__(name, InputSpec(height=4, width=4, resize=False, mean=(0.0,) * 3,
                                         std=(1.0,) * 3), torch.device("cpu"), torch.float32)
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def all_outputs(self):
        return {"mean": OutputSpec("mean", "mean of the item", ("mean",), default=True)}

    def output_shape(self, output, item_shape):
        return (1,)

    def forward(self, batch, outputs):
        means = batch.mean(dim=(1, 2, 3))
        self.entered.set()
        self.gate.wait(30)
        self.batches.append([round(float(m) * 255) for m in means])
        if (means > 0.999).any():
            raise RuntimeError("white image: simulated device failure")
        return {"mean": means[:, None]}


def _image(value: int) -> pb.Image:
    return raw_image(np.full((4, 4, 3), value, np.uint8))


def _request(*values: int) -> pb.ExtractImageRequest:
    return pb.ExtractImageRequest(model="probe", images=[_image(v) for v in values])


def _value(reply: pb.ExtractImageResponse, i: int = 0) -> int:
    data = reply.images[i].features[0].tensor.data
    return round(float(np.frombuffer(data, "<f4")[0]) * 255)


def _serve(policy: BatchPolicy):
    model = ProbeModel()
    return model, running([(model, policy)])


def test_concurrent_requests_batch_together_and_each_gets_its_own_result():
    model, server = _serve(BatchPolicy(max_batch_size=8, max_queue_delay_ms=300))
    with server as s, grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        futures = [stub.ExtractImage.future(_request(v), timeout=30) for v in range(10, 70, 10)]
        assert [_value(f.result()) for f in futures] == list(range(10, 70, 10))
        stats = rpc.InferenceServiceStub(channel).ModelStatistics(
            inference_pb.ModelStatisticsRequest(name="probe")).model_stats[0]
        assert stats.inference_count == 6 and stats.execution_count < 6
        assert sorted(v for batch in model.batches for v in batch) == list(range(10, 70, 10))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics").read()
        text = metrics.decode()
        batches = float(len(model.batches))
        assert f'foveal_batch_size_count{{instance="0",model="probe"}} {batches}' in text
        assert 'foveal_batch_size_sum{instance="0",model="probe"} 6.0' in text
        assert f'foveal_executions_total{{instance="0",model="probe"}} {batches}' in text


def test_one_request_with_several_images_splits_back_in_order():
    model, server = _serve(BatchPolicy(max_batch_size=4, max_queue_delay_ms=0))
    with server as s, grpc.insecure_channel(s.address) as channel:
        reply = rpc.FeatureServiceStub(channel).ExtractImage(_request(3, 1, 2), timeout=30)
        assert [_value(reply, i) for i in range(3)] == [3, 1, 2]
        assert model.batches == [[3, 1, 2]]


def test_overload_is_rejected_at_once_and_the_queue_drains_after():
    model, server = _serve(BatchPolicy(max_batch_size=1, max_queue_delay_ms=0,
                                       max_queue_size=2))
    with server as s, grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        model.gate.clear()
        running_request = stub.ExtractImage.future(_request(1), timeout=30)
        assert model.entered.wait(10)
        queued = [stub.ExtractImage.future(_request(v), timeout=30) for v in (2, 3)]
        wait_until(lambda: s.server.state.served["probe"].batcher.depth == 2)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ExtractImage(_request(4), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has 2 items queued (limit 2)" in caught.value.details()
        assert time.monotonic() - start < 5
        # health and metadata answer while the device is busy (work is off the event loop)
        health = rpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="probe"),
                                               timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        model.gate.set()
        assert [_value(f.result()) for f in (running_request, *queued)] == [1, 2, 3]


def test_expired_and_cancelled_requests_never_reach_the_device():
    model, server = _serve(BatchPolicy(max_batch_size=1, max_queue_delay_ms=0))
    with server as s, grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        model.gate.clear()
        first = stub.ExtractImage.future(_request(1), timeout=30)
        assert model.entered.wait(10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ExtractImage(_request(2), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = stub.ExtractImage.future(_request(3), timeout=30)
        wait_until(lambda: s.server.state.served["probe"].batcher.depth >= 1)
        cancelled.cancel()
        later = stub.ExtractImage.future(_request(4), timeout=30)
        wait_until(lambda: s.server.state.served["probe"].batcher.depth >= 2)
        model.gate.set()
        assert _value(first.result()) == 1 and _value(later.result()) == 4
        assert model.batches == [[1], [4]]
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics").read()
        assert b'foveal_items_dropped_total{model="probe",reason="cancelled"}' in text


def test_the_servers_timeout_applies_without_a_client_deadline():
    model, server = _serve(BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, timeout_ms=200))
    with server as s, grpc.insecure_channel(s.address) as channel:
        model.gate.clear()
        stub = rpc.FeatureServiceStub(channel)
        blocked = stub.ExtractImage.future(_request(1))
        assert model.entered.wait(10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ExtractImage(_request(2))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "within the deadline (200 ms)" in caught.value.details()
        model.gate.set()
        blocked.cancel()


def test_a_failing_batch_fails_only_its_own_requests():
    _, server = _serve(BatchPolicy(max_batch_size=2, max_queue_delay_ms=200))
    with server as s, grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        poisoned = [stub.ExtractImage.future(_request(v), timeout=30) for v in (255, 7)]
        for future in poisoned:
            with pytest.raises(grpc.RpcError) as caught:
                future.result()
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert ("model 'probe' failed on a batch of 2: RuntimeError: white image"
                    in caught.value.details())
        assert _value(stub.ExtractImage(_request(9), timeout=30)) == 9
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics").read()
        assert (b'foveal_request_failures_total{code="INTERNAL",method="ExtractImage",'
                b'model="probe"} 2.0') in text
