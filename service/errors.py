"""The one exception type handlers turn into a gRPC status: a code and a message for the user."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request failed for a reason the caller should hear: `code` and `message` go on the wire."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
