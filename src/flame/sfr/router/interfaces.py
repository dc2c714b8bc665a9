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

`ExchangeOwner` and `ResponseSink` sit on every forwarded request's path, so they are mypyc
traits, which the implementing classes name as bases: a compiled call through them is a
vtable lookup in C rather than a Python method call. The others are structural protocols.
"""

from __future__ import annotations

from typing import Protocol

from mypy_extensions import trait

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


@trait
class ExchangeOwner:
    """Who started an exchange on an upstream connection and hears how it goes."""

    __slots__ = ()

    def upstream_head(self, head: ResponseHead) -> None:
        """The response head arrived: commit to it (`commit`) or abandon the connection."""
        raise NotImplementedError

    def upstream_complete(self) -> None:
        """The whole response arrived (called outside the parser)."""
        raise NotImplementedError

    def upstream_failed(self, error: UpstreamError) -> None:
        """The exchange failed; `error.before_response` says whether a head had arrived."""
        raise NotImplementedError


@trait
class ResponseSink:
    """What receives one upstream response, once the forwarder has committed to it."""

    __slots__ = ()

    def bind_source(self, source: SourceControl | None) -> None:
        raise NotImplementedError

    def response_head(self, head: ResponseHead, endpoint: Endpoint) -> None:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_flush(self) -> None:
        """Write out what was held back: no more bytes are coming in this loop turn."""
        raise NotImplementedError

    def response_end(self) -> None:
        raise NotImplementedError

    def response_failed(self, error: RouterError) -> None:
        """No (more) response: before the head an error answer, after it a cut connection."""
        raise NotImplementedError


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

    def regroup(self) -> None:
        """The response is another variant than yours (Vary): fetch again, shared if may be."""
        ...
