"""Model instances: several copies of a model take batches from its one queue, concurrently."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from foveal.clients.cli import build_parser
from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service import cmd_serve
from foveal.service.models import InputSpec, OutputSpec, ServedModel
from foveal.service.repository import BatchPolicy, load_repository
from foveal.service.server import ServerSettings, load_instances
from service_helpers import gabor_responses, raw_image, running, to_numpy

TWO_ON_CPU = """
[[models]]
name = "twin"
kind = "gabor"
instances = 2
devices = ["cpu"]
[models.input]
size = [32, 32]
resize = false
[models.batching]
max_batch_size = 4
max_queue_delay_ms = 1
"""


class GateModel(ServedModel):
    """Returns each item's mean pixel; a batch holding a pixel value of 1 waits for `release`."""

    kind, description, weights = "gate", "test model", "none"

    def __init__(self):
        super().__init__("gate", InputSpec(height=2, width=2, resize=False, mean=(0.0,) * 3,
                                           std=(1.0,) * 3), torch.device("cpu"), torch.float32)
        self.held = threading.Event()
        self.release = threading.Event()

    def all_outputs(self):
        return {"mean": OutputSpec("mean", "mean of the item", ("mean",), default=True)}

    def output_shape(self, output, item_shape):
        return (1,)

    def forward(self, batch, outputs):
        values = (batch.mean(dim=(1, 2, 3)) * 255).round()
        if (values == 1).any():
            self.held.set()
            assert self.release.wait(30)
        return {"mean": values[:, None]}


def _gate_request(value: int) -> pb.ExtractImageRequest:
    return pb.ExtractImageRequest(model="gate", images=[raw_image(np.full((2, 2, 3), value,
                                                                          np.uint8))])


def _metrics(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read() \
        .decode()


def _executions(text: str, model: str) -> dict[str, float]:
    pattern = rf'foveal_executions_total{{instance="(\d+)",model="{model}"}} (\S+)'
    return {instance: float(count) for instance, count in re.findall(pattern, text)}


@pytest.mark.parametrize("instances", [1, 2])
def test_a_second_instance_runs_a_batch_while_the_first_computes(instances):
    model = GateModel()
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)
    with running([([model] * instances, policy)]) as s, \
            grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        slow = stub.ExtractImage.future(_gate_request(1), timeout=30)
        assert model.held.wait(10)
        try:
            if instances == 2:
                reply = stub.ExtractImage(_gate_request(7), timeout=10)
                assert to_numpy(reply.images[0].features[0].tensor).tolist() == [7.0]
            else:  # the only instance is busy: the second request waits its turn
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ExtractImage(_gate_request(7), timeout=0.5)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            model.release.set()
        assert to_numpy(slow.result().images[0].features[0].tensor).tolist() == [1.0]
        if instances == 2:
            assert _executions(_metrics(s), "gate") == {"0": 1.0, "1": 1.0}


def test_stopping_lets_every_instance_finish_its_batch():
    model = GateModel()
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)
    server = running([([model, model], policy)])
    with server as s, grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        pending = [stub.ExtractImage.future(_gate_request(1), timeout=30) for _ in range(2)]
        assert model.held.wait(10)
        stopping = threading.Thread(target=s.stop, kwargs={"grace": 10.0})
        time.sleep(0.2)  # both batches are running (the second too, on the other instance)
        stopping.start()
        time.sleep(0.2)
        model.release.set()
        assert [to_numpy(f.result().images[0].features[0].tensor).tolist()
                for f in pending] == [[1.0], [1.0]]
        stopping.join(20)
        assert not stopping.is_alive()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("foveal-gate")]


def test_two_cpu_instances_under_load_use_both_answer_right_and_stop_cleanly(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(TWO_ON_CPU)
    images = np.random.default_rng(5).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    expected = np.maximum(gabor_responses(images), 0)
    server = running(models_file=str(models))
    with server as s, grpc.insecure_channel(s.address) as channel:
        batcher = s.server.state.served["twin"].batcher
        assert len(batcher.instances) == 2
        assert batcher.instances[0].model is batcher.instances[1].model  # loaded once on cpu
        stub = rpc.FeatureServiceStub(channel)

        def extract(i: int) -> np.ndarray:
            request = pb.ExtractImageRequest(model="twin", images=[raw_image(images[i])])
            return to_numpy(stub.ExtractImage(request, timeout=60).images[0].features[0].tensor)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(extract, range(len(images))))
        for got, reference in zip(answers, expected, strict=True):
            np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)

        executions = _executions(_metrics(s), "twin")
        assert set(executions) == {"0", "1"} and min(executions.values()) >= 1
        text = _metrics(s)
        for instance in ("0", "1"):
            assert f'foveal_compute_seconds_count{{instance="{instance}",model="twin"}}' in text
            assert (f'foveal_instance_info{{device="cpu",instance="{instance}",model="twin"}} '
                    "1.0") in text
        items = sum(float(v) for v in re.findall(
            r'foveal_batch_size_sum{instance="\d",model="twin"} (\S+)', text))
        assert items == len(images)

        with triton.InferenceServerClient(s.address) as client:
            config = client.get_model_config("twin").config
            stats = client.get_inference_statistics("twin").model_stats[0]
        assert [(g.name, g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [
            ("twin_0", config.instance_group[0].KIND_CPU, 2, [])]
        assert config.parameters["device"].string_value == "cpu"
        assert stats.inference_count == len(images)
        assert stats.execution_count == sum(executions.values())
    assert not [t.name for t in threading.enumerate() if t.name.startswith("foveal-twin-")]


def test_weights_load_once_per_device_and_devices_do_not_mix(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(TWO_ON_CPU.replace("instances = 2", "instances = 3"))
    (config,) = load_repository(models)
    loaded = load_instances(config, ServerSettings(), "torch")
    assert len(loaded) == 3 and all(m is loaded[0] for m in loaded)
    assert loaded[0].device == torch.device("cpu")
    mixed = TWO_ON_CPU.replace('devices = ["cpu"]', 'devices = ["cpu", "cuda:0"]')
    models.write_text(mixed)
    (config,) = load_repository(models)
    with pytest.raises(ValueError, match=r"model 'twin': its devices mix \['cpu', 'cuda'\]"):
        load_instances(config, ServerSettings(), "torch")


def test_serve_flags_set_every_models_instances_and_devices(monkeypatch):
    monkeypatch.setenv("FOVEAL_INSTANCES", "3")
    args = build_parser().parse_args(["serve", "--devices", "cuda:0, cuda:1"])
    settings = cmd_serve.settings_from(cmd_serve.resolve(args))
    assert (settings.devices, settings.instances) == (("cuda:0", "cuda:1"), 3)
    assert settings.default_devices == ("cuda:0", "cuda:1")
    assert ServerSettings(device="cpu").default_devices == ("cpu",)
    with pytest.raises(ValueError, match="give device or devices, not both"):
        cmd_serve.settings_from(cmd_serve.resolve(build_parser().parse_args(
            ["serve", "--device", "cpu", "--devices", "cpu"])))
    with pytest.raises(ValueError, match="instances must be a positive integer, got 0"):
        ServerSettings(instances=0)


@pytest.mark.parametrize("flags,message", [
    (["--devices", "cuda:0,tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--devices", "cpu,cpu"], "devices name ['cpu'] more than once"),
    (["--instances", "0"], "must be a positive integer, got 0"),
])
def test_bad_serve_flags_are_named(capsys, flags, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *flags])
    assert message in capsys.readouterr().err
