"""How a client reaches the servers: addresses, TLS, token, limits, compression, retries.

Shared by FoveaClient (sync) and AsyncFoveaClient (asyncio): everything but the I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from .replicas import ROUND_ROBIN, parse_targets

MIB = 1024 * 1024
COMPRESSIONS = {None: grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip,
                "deflate": grpc.Compression.Deflate}
# Room for a message's fields around its payload (headers, shapes, names).
MESSAGE_OVERHEAD = 64 * 1024
# What a call that never ran on a working server fails with (see RetryPolicy).
RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for calls that fail with UNAVAILABLE (and only those, and CANCELLED
    ones the client did not cancel).

    UNAVAILABLE means the call did not reach a working server (not up yet, restarting, shutting
    down): trying again later is safe, and the requests are pure functions of their input. A
    server that starts shutting down as a call arrives can also drop it as CANCELLED before any
    handler sees it (gRPC's own race); the clients never retry a call they cancelled themselves,
    so a CANCELLED they are told of is the server's and is retried the same way.
    The n-th retry waits initial_backoff * multiplier**(n-1), at most max_backoff, with +-jitter.
    """

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self):
        if type(self.attempts) is not int or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("initial_backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.multiplier, int | float) or self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        return code in RETRIED_CODES and attempt < self.attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * (2 * random.random() - 1))


NO_RETRY = RetryPolicy(attempts=1)


def _pem(value: bytes | str | Path | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {what} {str(value)!r}: {err.strerror}") from None


@dataclass(frozen=True)
class Connection:
    """Validated connection settings, and the grpc objects made from them."""

    targets: tuple[str, ...]          # one channel each (parse_targets)
    timeout: float | None = 60.0
    retry: RetryPolicy = RetryPolicy()
    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    token: str | None = None
    max_message_bytes: int = 64 * MIB
    compression: str | None = None
    chunk_bytes: int = 1 * MIB

    @classmethod
    def make(cls, address: str | Sequence[str], *, timeout: float | None = 60.0,
             retry: RetryPolicy | None = None, tls: bool = False,
             root_certificates: bytes | str | Path | None = None,
             certificate_chain: bytes | str | Path | None = None,
             private_key: bytes | str | Path | None = None, token: str | None = None,
             max_message_bytes: int = 64 * MIB, compression: str | None = None,
             chunk_bytes: int | None = None) -> Connection:
        targets = parse_targets(address)
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, "
                             f"got {timeout!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, "
                             f"got {compression!r}")
        if type(max_message_bytes) is not int or max_message_bytes < 2 * MESSAGE_OVERHEAD:
            raise ValueError(f"max_message_bytes must be an int >= {2 * MESSAGE_OVERHEAD}, "
                             f"got {max_message_bytes!r}")
        if chunk_bytes is None:  # 1 MiB: large enough to amortise, small enough to interleave
            chunk_bytes = min(1 * MIB, max_message_bytes - MESSAGE_OVERHEAD)
        if (type(chunk_bytes) is not int or chunk_bytes < 1
                or chunk_bytes > max_message_bytes - MESSAGE_OVERHEAD):
            raise ValueError(f"chunk_bytes must be an int from 1 to max_message_bytes - "
                             f"{MESSAGE_OVERHEAD} ({max_message_bytes - MESSAGE_OVERHEAD}), "
                             f"got {chunk_bytes!r}")
        secrets = (root_certificates, certificate_chain, private_key)
        if not tls and any(v is not None for v in secrets):
            raise ValueError("root_certificates, certificate_chain and private_key need tls=True")
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("a client certificate (mutual TLS) needs both certificate_chain "
                             "and private_key")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        return cls(targets, timeout, retry or RetryPolicy(), tls,
                   _pem(root_certificates, "root certificates"),
                   _pem(certificate_chain, "certificate chain"),
                   _pem(private_key, "private key"), token, max_message_bytes, compression,
                   chunk_bytes)

    @property
    def address(self) -> str:
        """The targets as people read them."""
        return ", ".join(self.targets)

    def options(self) -> list[tuple[str, int | str]]:
        return [("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.service_config", ROUND_ROBIN)]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates,
                                            private_key=self.private_key,
                                            certificate_chain=self.certificate_chain)

    def channel(self, target: str) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(target, self.options())
        return grpc.secure_channel(target, credentials, self.options())

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(target, self.options())
        return grpc.aio.secure_channel(target, credentials, self.options())

    def grpc_compression(self) -> grpc.Compression:
        return COMPRESSIONS[self.compression]

    def metadata(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        pairs = []
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        if request_id:
            pairs.append(("x-request-id", request_id))
        return tuple(pairs)

    def deadline(self, timeout: float | None) -> float | None:
        """The per-call timeout: the call's own if given, else the client's."""
        return self.timeout if timeout is None else timeout

    def check_request_size(self, size: int, what: str) -> None:
        if size > self.max_message_bytes:
            raise ValueError(f"{what} is {size / MIB:.1f} MiB, over the "
                             f"{self.max_message_bytes / MIB:.1f} MiB message limit "
                             "(max_message_bytes); send it smaller or raise the limit")
