"""The thin client imports and works with torch unavailable (numpy, grpcio, protobuf only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from clients_helpers import raw_features

BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_the_blocker_really_blocks_torch():
    result = _run("import torch")
    assert result.returncode != 0 and "blocked for this test: torch" in result.stderr


def test_client_imports_and_extracts_without_torch(server, channel):
    result = _run(f"""
        import json
        import numpy as np
        from foveal.clients import FoveaClient, AsyncFoveaClient, FoveaError, RetryPolicy
        from foveal.clients import connection, errors, models, replicas, streaming, wire

        with FoveaClient(["{server.address}"], retry=RetryPolicy(attempts=2)) as c:
            features = c.extract_image(np.full((32, 32, 3), 77, np.uint8), "gabor")
            (_, clip), = c.stream_clips([np.zeros((8, 24, 24, 3), np.uint8)], "motion")
        print(json.dumps({{"simple": features["simple"].tolist(),
                          "energy_shape": list(clip["energy"].shape),
                          "loaded": sorted(m for m in ("torch", "PIL", "av")
                                           if m in sys.modules)}}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(result.stdout)
    assert reply["loaded"] == [] and reply["energy_shape"] == [16, 2, 4, 4]
    expected = raw_features(channel, "gabor", np.full((32, 32, 3), 77, np.uint8))
    np.testing.assert_array_equal(np.array(reply["simple"], np.float32), expected)
