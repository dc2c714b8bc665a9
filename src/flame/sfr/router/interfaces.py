"""The interfaces between the parts of a forwarded exchange.

::

    client --RequestBody--> BodyTarget (upstream connection)
    upstream connection --ExchangeOwner--> Forwarding (decides: commit, retry, fail)
    upstream connection --ResponseSink--> the client's cycle (direct)
                                       or a SharedFetch --Waiter--> each joined cycle (multicast)

Everything is driven by callbacks from the transports (events in, decisions out): no task or
future per request. A sink that cannot take more pauses its `SourceControl` (the upstream
connection's reading) and resumes it when its client drains; that is the response half of
back-pressure.
"""

from __future__ import annotations

from typing import Protocol

from flame.sfr.models import Endpoint
from flame.sfr.router.errors import RouterError, UpstreamError
from flame.sfr.router.response import ResponseHead

__all__ = ["BodyTarget", "ExchangeOwner", "ResponseSink", "SourceControl", "Waiter"]


class SourceControl(Protocol):
    """Where response bytes come from: can be told to stop and go on reading."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class BodyTarget(Protocol):
    """Where a client's request body goes (an upstream connection)."""

    def send_body(self, data: bytes) -> None: ...

    def end_body(self) -> None: ...


class ExchangeOwner(Protocol):
    """Who started an exchange on an upstream connection and hears how it goes."""

    def upstream_head(self, head: ResponseHead) -> None:
        """The response head arrived: commit to it (`commit`) or abandon the connection."""
        ...

    def upstream_complete(self) -> None:
        """The whole response arrived (called outside the parser)."""
        ...

    def upstream_failed(self, error: UpstreamError) -> None:
        """The exchange failed; `error.before_response` says whether a head had arrived."""
        ...


class ResponseSink(Protocol):
    """What receives one upstream response, once the forwarder has committed to it."""

    def bind_source(self, source: SourceControl | None) -> None: ...

    def response_head(self, head: ResponseHead, endpoint: Endpoint) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """Write out what was held back: no more bytes are coming in this loop turn."""
        ...

    def response_end(self) -> None: ...

    def response_failed(self, error: RouterError) -> None:
        """No (more) response: before the head an error answer, after it a cut connection."""
        ...


class Waiter(Protocol):
    """A client waiting for a shared response (coincidental multicast)."""

    @property
    def writable(self) -> bool:
        """Whether its connection can take more bytes now."""
        ...

    def deliver_head(self, head: ResponseHead, endpoint: Endpoint) -> None: ...

    def deliver_body(self, data: bytes) -> None: ...

    def flush(self) -> None:
        """Write out head and body bytes held back for a single write."""
        ...

    def deliver_end(self) -> None: ...

    def deliver_error(self, error: RouterError) -> None: ...

    def refetch(self) -> None:
        """The response is not for sharing: fetch your own."""
        ...
