"""`make serve` installs what serving needs, not the dev extra; serving works without it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
# Packages of the dev extra that serving must not need (import names).
DEV_ONLY = ("ray", "ruff", "matplotlib", "grpc_tools", "tritonclient", "rich", "hypothesis",
            "pytest", "av", "grpc_health")


def _make_dry_run(target: str, venv: Path) -> list[str]:
    result = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if "pip install" in line]


def test_make_serve_installs_the_serve_extra_and_make_test_the_dev_extra(tmp_path):
    assert _make_dry_run("serve", tmp_path / "venv") == [
        f"{tmp_path}/venv/bin/python -m pip install -e '.[serve]'"]
    assert _make_dry_run("test", tmp_path / "venv") == [
        f"{tmp_path}/venv/bin/python -m pip install -e '.[dev]'"]


def test_serving_needs_none_of_the_dev_packages(tmp_path):
    """A server on a model with .safetensors weights answers with the dev-only packages
    blocked from import."""
    from safetensors.torch import save_file

    (tmp_path / "tiny_net.py").write_text(textwrap.dedent("""
        from torch import nn

        def net():
            return nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    """))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU())
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    (tmp_path / "models.toml").write_text(textwrap.dedent("""
        [[models]]
        name = "net"
        kind = "python"
        factory = "tiny_net:net"
        weights = "net.safetensors"
        [models.input]
        size = [8, 8]
        mean = [0.5, 0.5, 0.5]
        std = [0.25, 0.25, 0.25]
    """))
    code = textwrap.dedent(f"""
        import json
        import sys

        for name in {DEV_ONLY!r}:  # as if not installed: imports fail, find_spec says None
            sys.modules[name] = None
        sys.path.insert(0, {str(tmp_path)!r})
        import grpc, numpy as np
        from foveal.proto import rpc
        from foveal.proto.foveal.v1 import foveal_pb2 as pb
        from foveal.service.runner import ServerThread
        from foveal.service.server import ServerSettings

        settings = ServerSettings(port=0, metrics_port=0, backend="torch",
                                  models_file={str(tmp_path / "models.toml")!r})
        with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
            pixels = np.full((8, 8, 3), 128, np.uint8)
            reply = rpc.FeatureServiceStub(ch).ExtractImage(pb.ExtractImageRequest(
                model="net", images=[pb.Image(pixels=pb.Tensor(shape=[8, 8, 3],
                    dtype=pb.DATA_TYPE_UINT8, data=pixels.tobytes()))]), timeout=60)
        tensor = reply.images[0].features[0].tensor
        print(json.dumps(np.frombuffer(tensor.data, "<f4").reshape(tuple(tensor.shape))
                         .tolist()))
        print(json.dumps(sorted(m for m in {DEV_ONLY!r} if sys.modules[m] is not None)))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    features, loaded = result.stdout.strip().splitlines()[-2:]
    assert json.loads(loaded) == []
    # the same net in float64 on the same normalised grey image: (128/255 - 0.5) / 0.25
    x = torch.full((1, 3, 8, 8), (128 / 255 - 0.5) / 0.25, dtype=torch.float64)
    expected = net.double()(x)[0].detach().numpy()
    np.testing.assert_allclose(np.array(json.loads(features)), expected, atol=1e-5, rtol=1e-5)
