"""Warm-up: before serving, every power-of-two batch size runs once (compiling and tuning the
kernels on a GPU), while health still says NOT_SERVING."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.models import InputSpec, OutputSpec, ServedModel
from foveal.service.repository import BatchPolicy
from foveal.service.runner import ServerThread
from foveal.service.server import ServerSettings
from service_helpers import raw_image, running, settings


class RecordingModel(ServedModel):
    kind, description, weights = "recording", "records batch sizes", "none"

    def __init__(self):
        super().__init__("recording", InputSpec(height=4, width=4, resize=False),
                         torch.device("cpu"), torch.float32)
        self.batch_sizes: list[int] = []
        self.ready_during_forward: list[bool] = []
        self.server = None  # set by a test to observe readiness while batches run

    def all_outputs(self):
        return {"mean": OutputSpec("mean", "mean of each item", default=True)}

    def output_shape(self, output, item_shape):
        return (1,)

    def forward(self, batch, outputs):
        self.batch_sizes.append(batch.shape[0])
        if self.server is not None:
            self.ready_during_forward.append(self.server.state.ready)
        return {"mean": batch.mean(dim=(1, 2, 3)).unsqueeze(1)}


@pytest.mark.parametrize("max_batch,expected", [(6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]),
                                                (1, [1])])
def test_warm_up_runs_each_power_of_two_batch(max_batch, expected):
    model = RecordingModel()
    policy = BatchPolicy(max_batch_size=max_batch)
    with running([(model, policy)], warmup="on") as server:
        assert model.batch_sizes == expected
        with grpc.insecure_channel(server.address) as channel:
            reply = rpc.FeatureServiceStub(channel).ExtractImage(pb.ExtractImageRequest(
                model="recording", images=[raw_image(np.full((4, 4, 3), 51, np.uint8))]))
        assert len(reply.images) == 1


def test_not_ready_until_warm_up_is_over():
    model = RecordingModel()
    server = ServerThread(settings(warmup="on"), [(model, BatchPolicy(max_batch_size=4))])
    model.server = server.server
    server.start()
    try:
        assert model.ready_during_forward == [False, False, False]
        assert server.server.state.ready
    finally:
        server.stop(grace=1.0)


def test_no_warm_up_with_torch_backend_by_default():
    model = RecordingModel()
    with running([(model, BatchPolicy())]):
        assert model.batch_sizes == []


def test_warmup_setting_is_validated():
    with pytest.raises(ValueError, match=r"warmup must be one of \('auto', 'on', 'off'\)"):
        ServerSettings(warmup="always")
