"""Where a client's calls go: one or more servers, spread round-robin over the ready ones.

An address is any gRPC target: `host:port`, `dns:///features.internal:8001` (every address the
name resolves to, re-resolved as replicas come and go), `ipv4:127.0.0.1:8001,127.0.0.1:8003`.
Several addresses (a list, or plain `host:port` addresses joined by commas) give one channel
each. Every channel runs gRPC's `round_robin` policy, so a target that resolves to several
replicas spreads its calls over every ready one, and reconnects to one that comes back; on top,
the client takes its channels in turn, only the ready ones while any is. A call that failed with
UNAVAILABLE is retried on another channel where there is one (`pick(avoid=...)`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from foveal.proto import rpc

# gRPC's own target schemes: an address starting with one of these is one target, as it is.
SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
_SCHEME = re.compile(rf"^({'|'.join(re.escape(s) for s in SCHEMES)}):")


def parse_targets(address: str | Sequence[str]) -> tuple[str, ...]:
    """The gRPC targets named by `address`: one string, or a list of them.

    A string with a gRPC scheme is one target; any other string may join several
    `host:port` addresses with commas.
    """
    items = [address] if isinstance(address, str) else address
    if not isinstance(items, Sequence) or not items:
        raise ValueError(f"address must be 'host:port', a gRPC target or a list of them, "
                         f"got {address!r}")
    targets: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"address must be 'host:port', a gRPC target or a list of them, "
                             f"got {item!r}")
        item = item.strip()
        parts = [item] if _SCHEME.match(item) else [p.strip() for p in item.split(",")]
        for part in parts:
            if not part or any(c.isspace() for c in part):
                raise ValueError(f"address {item!r}: {part!r} is not a 'host:port' address")
        targets += parts
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ValueError(f"address names {repeated} more than once")
    return tuple(targets)


class Replicas:
    """A channel and a FeatureService stub per target, and the turn order over them."""

    def __init__(self, targets: tuple[str, ...], connect: Callable[[str], Any]):
        self.targets = targets
        self.channels = [connect(target) for target in targets]
        self.stubs = [rpc.FeatureServiceStub(channel) for channel in self.channels]
        self._turn = itertools.count()

    def ready(self) -> list[int]:
        """The channels connected to a working server now."""
        raise NotImplementedError

    def pick(self, avoid: int | None = None) -> int:
        """The channel for the next call: the ready ones in turn (any, while none is ready),
        other than `avoid` (the one a retried call just failed on) where possible."""
        if len(self.channels) == 1:
            return 0
        ready = [i for i in self.ready() if i != avoid]
        candidates = ready or [i for i in range(len(self.channels)) if i != avoid]
        return candidates[next(self._turn) % len(candidates)]


class SyncReplicas(Replicas):
    """grpc.Channel: connectivity arrives by subscription (which also starts connecting)."""

    def __init__(self, targets: tuple[str, ...], connect: Callable[[str], grpc.Channel]):
        super().__init__(targets, connect)
        self._states: list[grpc.ChannelConnectivity | None] = [None] * len(targets)
        self._watchers = []
        for i, channel in enumerate(self.channels):
            watcher = functools.partial(self._states.__setitem__, i)
            channel.subscribe(watcher, try_to_connect=True)
            self._watchers.append((channel, watcher))

    def ready(self) -> list[int]:
        return [i for i, s in enumerate(self._states) if s is grpc.ChannelConnectivity.READY]

    def close(self) -> None:
        for channel, watcher in self._watchers:
            channel.unsubscribe(watcher)
        for channel in self.channels:
            channel.close()


class AsyncReplicas(Replicas):
    """grpc.aio.Channel: asked for its state at each pick (which reconnects an idle one)."""

    def ready(self) -> list[int]:
        return [i for i, channel in enumerate(self.channels)
                if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
