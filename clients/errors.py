"""The exception a client raises when a call fails: the gRPC status code and the server's words."""

from __future__ import annotations

import grpc


class FoveaError(Exception):
    """A call that failed on the server or in transport.

    `code` is the gRPC status (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...), `message` the
    server's explanation, `method` the RPC, `attempts` how many times it was tried.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, method: str = "",
                 attempts: int = 1):
        self.code = code
        self.message = message
        self.method = method
        self.attempts = attempts
        tried = f" (after {attempts} attempts)" if attempts > 1 else ""
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}{tried}")


def from_rpc_error(err: grpc.RpcError, method: str, attempts: int = 1) -> FoveaError:
    """Wrap a grpc.RpcError (sync or asyncio) in a FoveaError with its code and details."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    return FoveaError(code or grpc.StatusCode.UNKNOWN, details or "", method=method,
                      attempts=attempts)
