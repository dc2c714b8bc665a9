"""A client's request body on its way to an endpoint: buffered, streamed, kept for a retry.

Bytes that arrive before an upstream connection exists are buffered (reading pauses above the
high-water mark); once attached, bytes go straight to the upstream transport as they arrive.
Sent bytes are also kept while the body is small (`Limits.retry_body_bytes`), so that a failed
attempt can be replayed on the next endpoint; a larger body that has started streaming makes
the request non-retryable (`replayable` False).
"""

from __future__ import annotations

from collections.abc import Callable

from flame.sfr.router.flow import BODY_BUFFER, PEER_FULL, FlowControl
from flame.sfr.router.interfaces import BodyTarget

__all__ = ["RequestBody"]


class RequestBody:
    """The body of one request (possibly empty), between the client and its upstream."""

    __slots__ = (
        "_flow",
        "_high_water",
        "_pending",
        "_pending_bytes",
        "_retain_limit",
        "_retained",
        "_retained_bytes",
        "_target",
        "complete",
        "on_attach",
        "received",
        "replayable",
    )

    def __init__(
        self,
        flow: FlowControl,
        *,
        retain_limit: int,
        high_water: int,
        complete: bool = False,
        on_attach: Callable[[], None] | None = None,
    ) -> None:
        self._flow = flow
        self._retain_limit = retain_limit
        self._high_water = high_water
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._retained: list[bytes] = []
        self._retained_bytes = 0
        self._target: BodyTarget | None = None
        # Called on the first attach: the place to send `100 Continue` to the client.
        self.on_attach = on_attach
        self.complete = complete  # the client has sent all of it
        self.received = 0
        self.replayable = True  # every byte received so far is still in memory

    @property
    def attached(self) -> bool:
        return self._target is not None

    def feed(self, data: bytes) -> None:
        """Bytes of the body from the client."""
        self.received += len(data)
        target = self._target
        if target is not None:
            target.send_body(data)
            self._retain(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self._high_water:
            self._flow.block_reading(BODY_BUFFER)

    def finish(self) -> None:
        """The client's body is complete."""
        self.complete = True
        if self._target is not None:
            self._target.end_body()

    def attach(self, target: BodyTarget) -> None:
        """Send what is buffered (and, on a retry, what was already sent) to `target`."""
        self._target = target
        if self.on_attach is not None:
            callback, self.on_attach = self.on_attach, None
            callback()
        for chunk in self._retained:
            target.send_body(chunk)
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            for chunk in pending:
                target.send_body(chunk)
                self._retain(chunk)
        self._flow.unblock_reading(BODY_BUFFER)
        if self.complete:
            target.end_body()

    def detach(self) -> None:
        """The attempt is over; later bytes are dropped (or buffered for a retry)."""
        self._target = None
        self._flow.unblock_reading(PEER_FULL)

    # Back-pressure from the upstream transport (its pause_writing / resume_writing).
    def peer_paused(self) -> None:
        self._flow.block_reading(PEER_FULL)

    def peer_resumed(self) -> None:
        self._flow.unblock_reading(PEER_FULL)

    def _retain(self, chunk: bytes) -> None:
        if not self.replayable:
            return
        if self._retained_bytes + len(chunk) > self._retain_limit:
            self.replayable = False
            self._retained = []
            self._retained_bytes = 0
            return
        self._retained.append(chunk)
        self._retained_bytes += len(chunk)
