"""foveal.clients: talk to foveal servers, and extract features of many images and videos.

    from foveal.clients import FoveaClient, AsyncFoveaClient, FoveaError, RetryPolicy

The clients need only numpy, grpcio and protobuf (PyAV to read video): importing this package
imports no torch.
"""

from .client import AsyncFoveaClient, ClipFeatures, FoveaClient
from .connection import RetryPolicy
from .errors import FoveaError

__all__ = ["AsyncFoveaClient", "ClipFeatures", "FoveaClient", "FoveaError", "RetryPolicy"]
