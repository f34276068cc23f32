"""The bookkeeping of one ExtractClips stream, shared by the sync and asyncio clients.

Clips are pulled from the caller's iterator only when fewer than `limit` are unanswered, so a
long video is never read far ahead of the server. Sent clips stay in `pending` until their
reply arrives (replies come in order); when the stream breaks with UNAVAILABLE, the next
attempt (on another replica, where the client has several) sends the unanswered clips again,
then goes on with new ones. Each clip's id is its
position in the caller's sequence, which checks that replies match.

The state here is plain data; the clients wrap it with a threading or asyncio condition.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import FoveaError

WAIT, STALE, DONE, PULL, SEND = "wait", "stale", "done", "pull", "send"


@dataclass
class Attempt:
    """One call's sender: which attempt it belongs to and the next position it sends."""

    epoch: int
    seq: int


class ClipWindow:
    def __init__(self, source: Iterator[Any], limit: int):
        self.source = source
        self.limit = limit
        self.pending: collections.deque[tuple[str, Any]] = collections.deque()
        self.first = 0            # position (in the caller's sequence) of pending[0]
        self.pulling = False      # a sender is reading the next item from the source
        self.exhausted = False    # the source has ended (or failed: see error)
        self.error: BaseException | None = None
        self.epoch = 0

    def new_attempt(self) -> Attempt:
        """Start a call: it resends what is unanswered, and makes older senders stop."""
        self.epoch += 1
        return Attempt(self.epoch, self.first)

    def stop(self) -> None:
        self.epoch += 1

    def next_action(self, attempt: Attempt) -> tuple[str, tuple[str, Any] | None]:
        """What a sender does now: send an entry, pull a new item, wait, or end."""
        if attempt.epoch != self.epoch:
            return STALE, None
        offset = attempt.seq - self.first
        if offset < len(self.pending):
            attempt.seq += 1
            return SEND, self.pending[offset]
        if self.pulling:
            return WAIT, None
        if self.exhausted:
            return DONE, None
        if len(self.pending) >= self.limit:
            return WAIT, None
        self.pulling = True
        return PULL, None

    def pulled(self, item: Any = None, *, end: bool = False,
               error: BaseException | None = None) -> None:
        """Record what a PULL produced: an item, the end of the source, or its error."""
        self.pulling = False
        if end or error is not None:
            self.exhausted = True
            self.error = self.error or error
        else:
            self.pending.append((str(self.first + len(self.pending)), item))

    def fail(self, error: BaseException) -> None:
        """Making a clip's messages failed: send nothing more; the caller gets `error`."""
        self.exhausted = True
        self.error = self.error or error

    def answered(self, clip_id: str) -> Any:
        """The item a reply answers (the oldest unanswered one)."""
        if not self.pending:
            raise FoveaError(grpc.StatusCode.INTERNAL, f"a reply for clip {clip_id!r} arrived "
                             "but no clip was waiting for one", method="ExtractClips")
        expected, item = self.pending.popleft()
        self.first += 1
        if clip_id != expected:
            raise FoveaError(grpc.StatusCode.INTERNAL, f"replies out of order: got clip "
                             f"{clip_id!r}, expected {expected!r}", method="ExtractClips")
        return item

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.pulling and not self.pending

    def unanswered_error(self) -> FoveaError:
        return FoveaError(grpc.StatusCode.INTERNAL, f"the stream ended with {len(self.pending)} "
                          "clip(s) unanswered", method="ExtractClips")
