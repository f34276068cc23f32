"""foveal.service: the gRPC feature service (foveal.v1 and Triton's KServe v2 protocol).

`foveal serve` runs it; `FeatureServer` is the asyncio server and `ServerThread` runs one in a
background thread (tests, benchmarks, notebooks).
"""

from importlib import metadata

try:
    __version__ = metadata.version("foveal")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"
