"""The TOML model repository and backend choice: good files load, each broken rule is named."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.repository import BatchPolicy, RepositoryError, load_repository
from foveal.service.server import choose_backend
from service_helpers import raw_image, running, to_numpy

FULL = """
[[models]]
name = "edges"
kind = "gabor"
device = "cpu"
precision = "float32"
outputs = ["simple", "energy"]
default_outputs = ["energy"]
[models.input]
size = [64, 48]
resize = false
mean = [0.4, 0.5, 0.6]
std = [0.2, 0.2, 0.2]
max_pixels = 10000
[models.batching]
max_batch_size = 2
max_queue_delay_ms = 7.5

[[models]]
name = "motion"
kind = "motion-energy"
[models.input]
size = [32, 32]
frames = 9
"""


def _write(tmp_path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_full_repository_loads(tmp_path):
    edges, motion = load_repository(_write(tmp_path, FULL))
    assert (edges.name, edges.kind, edges.device, edges.precision) == (
        "edges", "gabor", "cpu", "float32")
    assert (edges.input.height, edges.input.width, edges.input.resize) == (64, 48, False)
    assert edges.input.mean == (0.4, 0.5, 0.6) and edges.input.max_pixels == 10000
    assert edges.outputs == ("simple", "energy") and edges.default_outputs == ("energy",)
    policy = edges.batch_policy(BatchPolicy(max_queue_size=9))
    assert (policy.max_batch_size, policy.max_queue_delay_ms, policy.max_queue_size) == (2, 7.5, 9)
    assert (motion.input.kind, motion.input.frames, motion.input.height) == ("video", 9, 32)


@pytest.mark.parametrize("text,message", [
    ('[[models]]\nname = "a"\nkind = "gabor"\ncolour = 1\n', "unknown key(s) ['colour']"),
    ('[[models]]\nname = "a"\nkind = "alexnet"\n', "unknown kind 'alexnet'"),
    ('[[models]]\nkind = "gabor"\n', "name is required"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[[models]]\nname = "a"\nkind = "gabor"\n',
     "model names must be unique; repeated: ['a']"),
    ('[[models]]\nname = "a"\nkind = "gabor"\nweights = "w.pt"\n',
     "gabor models are analytic and take no weights"),
    ('[[models]]\nname = "a"\nkind = "gabor"\nprecision = "int8"\n', "precision must be one of"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ndevice = "tpu"\n', "device must be auto, cpu"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ndevices = ["cpu", "cuda:x"]\n',
     "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ndevices = []\n',
     "devices must be a non-empty list"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ndevices = ["cpu", "cpu"]\n',
     "devices name ['cpu'] more than once; for several instances on one device set instances"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ndevice = "cpu"\ndevices = ["cpu"]\n',
     "give device or devices, not both"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ninstances = 0\n',
     "instances must be a positive integer, got 0"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ninstances = "2"\n',
     "instances must be a positive integer, got '2'"),
    ('[[models]]\nname = "a"\nkind = "gabor"\ninstances = 1\ndevices = ["cuda:0", "cuda:1"]\n',
     "instances (1) must be at least the number of devices (2)"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.input]\nsize = [10]\n',
     "size must be [height, width]"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.input]\nmean = [0.5]\n',
     "mean needs one value per channel (3)"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.input]\nstd = [1, 0, 1]\n',
     "std values must be > 0"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.input]\nframes = 8\n',
     "frames applies to video kinds only"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.input]\nchannels = 1\n',
     "take 3 channels"),
    ('[[models]]\nname = "a"\nkind = "motion-energy"\n[models.input]\nsize = [0, 0]\n',
     "video models need a size"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.batching]\nmax_batch_size = 0\n',
     "max_batch_size must be a positive integer"),
    ('[[models]]\nname = "a"\nkind = "gabor"\n[models.batching]\ndelay = 1\n',
     "unknown key(s) ['delay']"),
    ("models = 3\n", "needs at least one [[models]] entry"),
    ("[[models]\n", "not valid TOML"),
])
def test_each_broken_rule_is_named(tmp_path, text, message):
    with pytest.raises(RepositoryError) as caught:
        load_repository(_write(tmp_path, text))
    assert message in str(caught.value) and "models.toml" in str(caught.value)


def test_instances_are_placed_round_robin_over_the_devices(tmp_path):
    one, spread, pinned, default = load_repository(_write(tmp_path, """
[[models]]
name = "one"
kind = "gabor"
instances = 3
devices = ["cpu"]
[[models]]
name = "spread"
kind = "gabor"
instances = 3
devices = ["cuda:0", "cuda:1"]
[[models]]
name = "pinned"
kind = "gabor"
device = "cuda:1"
[[models]]
name = "default"
kind = "gabor"
"""))
    assert (one.devices, one.instances, one.device) == (("cpu",), 3, "cpu")
    assert one.instance_devices(("cuda:0",)) == ["cpu"] * 3
    assert spread.device == "cuda:0"  # the first, for one-instance users (--local)
    assert spread.instance_devices(("cpu",), 8) == ["cuda:0", "cuda:1", "cuda:0"]
    assert pinned.instance_devices(("cuda:0", "cuda:1")) == ["cuda:1"]
    assert pinned.instance_devices(("cpu",), 2) == ["cuda:1", "cuda:1"]
    # an entry that names no device takes the server's --devices / --instances
    assert default.instance_devices(("cuda:0", "cuda:1")) == ["cuda:0", "cuda:1"]
    assert default.instance_devices(("cpu",), 4) == ["cpu"] * 4
    with pytest.raises(ValueError, match=r"model 'default': 1 instance\(s\) cannot cover 2 "
                                         r"devices \['cuda:0', 'cuda:1'\]"):
        default.instance_devices(("cuda:0", "cuda:1"), 1)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(RepositoryError, match="cannot read model repository"):
        load_repository(tmp_path / "absent.toml")


def test_repository_settings_reach_the_served_model(tmp_path):
    with running(models_file=str(_write(tmp_path, FULL))) as s, \
            grpc.insecure_channel(s.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        info = stub.GetModel(pb.GetModelRequest(name="edges"))
        assert [o.name for o in info.outputs if o.is_default] == ["energy"]
        assert list(info.input.mean) == pytest.approx([0.4, 0.5, 0.6])
        reply = stub.ExtractImage(pb.ExtractImageRequest(model="edges", images=[
            raw_image(np.zeros((64, 48, 3), np.uint8))]))
        assert [f.name for f in reply.images[0].features] == ["energy"]
        assert list(reply.images[0].features[0].tensor.shape) == [48, 14, 10]


def test_backend_choice_is_explicit_and_reported():
    cpu = torch.device("cpu")
    assert choose_backend("auto", cpu)[:2] == ("torch", "torch")
    assert choose_backend("torch", cpu)[:2] == ("torch", "torch")
    # the tests run with TRITON_INTERPRET=1, so "triton" on a CPU means the interpreter
    assert choose_backend("triton", cpu)[:2] == ("triton", "interpreter")


def test_a_server_on_the_interpreter_backend_matches_the_torch_backend(tmp_path):
    """The kernels' path end to end, on a model small enough for Triton's interpreter."""
    models = _write(tmp_path, '[[models]]\nname = "t"\nkind = "gabor"\n'
                              '[models.input]\nsize = [15, 15]\n')
    image = raw_image(np.random.default_rng(3).integers(0, 256, (15, 15, 3), dtype=np.uint8))
    results = {}
    for backend in ("torch", "triton"):
        with running(models_file=str(models), backend=backend) as s, \
                grpc.insecure_channel(s.address) as channel:
            stub = rpc.FeatureServiceStub(channel)
            info = stub.GetModel(pb.GetModelRequest(name="t"))
            reply = stub.ExtractImage(pb.ExtractImageRequest(model="t", images=[image]),
                                      timeout=120)
            results[info.backend] = to_numpy(reply.images[0].features[0].tensor)
    assert set(results) == {"torch", "interpreter"}
    np.testing.assert_allclose(results["interpreter"], results["torch"], atol=1e-4, rtol=1e-4)
