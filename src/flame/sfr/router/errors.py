"""Errors of the service router data plane (SFR-1), each one an HTTP answer.

::

    FlameError (flame.common.errors)
    └── RouterError                    500 a bug of ours; the request fails, the router lives on
        ├── RequestRejected            the client's request cannot be served as sent
        │   ├── BadRequest             400 malformed request line, headers or body framing
        │   ├── MethodNotAllowed       405 CONNECT (the SR is a reverse router, not a tunnel)
        │   ├── RequestTimeout         408 the request head did not arrive in time
        │   ├── PayloadTooLarge        413 the body is above `Limits.max_body_bytes`
        │   ├── HeadersTooLarge        431 request line + headers above `Limits.max_head_bytes`
        │   └── LoopDetected           508 the request already went through this SR (`Via`)
        ├── RouteError                 nowhere to send the request
        │   ├── UnknownFqdn            404 the FQDN is not in the forwarding table
        │   └── NoEndpoint             503 known FQDN, no usable endpoint (`Retry-After`)
        └── UpstreamError              the chosen endpoint failed (`sfe`, `endpoint` say which)
            ├── UpstreamConnectError   503 connection refused, unreachable, connect time-out
            │                              (`Retry-After`: no endpoint could be reached;
            │                              `network_refused`: no route, see forward.py)
            ├── UpstreamBusy           503 this worker's connection limit towards it is reached
            ├── UpstreamTimeout        504 no response head, or no body progress, in time
            ├── UpstreamReset          502 closed before the response was complete
            └── UpstreamProtocolError  502 the response could not be parsed

`as_dict()` is the JSON body of the answer, e.g.
``{"error": "unknown_fqdn", "message": "...", "fqdn": "vod.example"}``.
`UpstreamError.before_response` is True when no byte of a response had arrived, the condition
for retrying on the next endpoint (together with an idempotent method).

Statuses: 404 for an FQDN the SR has no route for at all, like a gateway with no route for a
host (Envoy, Traefik): the client asked for something that is not here, and retrying will not
help; the body's `error` (`unknown_fqdn`) tells it from an endpoint's own 404. 503 with
`Retry-After` when the FQDN is known but no endpoint can take the request now (none connected,
all ejected, or none reachable): try again later. 502 only for a bad answer from an endpoint
(reset after the request was sent, unparsable), 504 for a silent one.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar, Final

from flame.common.errors import FlameError

__all__ = [
    "NETWORK_ERRNOS",
    "BadRequest",
    "HeadersTooLarge",
    "LoopDetected",
    "MethodNotAllowed",
    "NoEndpoint",
    "PayloadTooLarge",
    "RequestRejected",
    "RequestTimeout",
    "RouteError",
    "RouterError",
    "UnknownFqdn",
    "UpstreamBusy",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamTimeout",
]


class RouterError(FlameError):
    """A request failed inside the router itself."""

    code: ClassVar[str] = "router_error"
    http_status: ClassVar[int] = 500


class RequestRejected(RouterError):
    """The request cannot be served as sent; the connection is closed after the answer."""

    code: ClassVar[str] = "bad_request"
    http_status: ClassVar[int] = 400


class BadRequest(RequestRejected):
    code: ClassVar[str] = "bad_request"


class MethodNotAllowed(RequestRejected):
    code: ClassVar[str] = "method_not_allowed"
    http_status: ClassVar[int] = 405


class RequestTimeout(RequestRejected):
    code: ClassVar[str] = "request_timeout"
    http_status: ClassVar[int] = 408


class PayloadTooLarge(RequestRejected):
    code: ClassVar[str] = "payload_too_large"
    http_status: ClassVar[int] = 413


class HeadersTooLarge(RequestRejected):
    code: ClassVar[str] = "request_header_fields_too_large"
    http_status: ClassVar[int] = 431


class LoopDetected(RequestRejected):
    code: ClassVar[str] = "loop_detected"
    http_status: ClassVar[int] = 508


class RouteError(RouterError):
    """The forwarding table has nowhere to send the request."""

    def __init__(self, message: str, /, *, fqdn: str, **context: object) -> None:
        super().__init__(message, fqdn=fqdn, **context)
        self.fqdn = fqdn


class UnknownFqdn(RouteError):
    code: ClassVar[str] = "unknown_fqdn"
    http_status: ClassVar[int] = 404


class NoEndpoint(RouteError):
    code: ClassVar[str] = "no_endpoint"
    http_status: ClassVar[int] = 503

    def __init__(self, message: str, /, *, fqdn: str, retry_after: int, **context: object) -> None:
        super().__init__(message, fqdn=fqdn, retry_after=retry_after, **context)
        self.retry_after = retry_after


class UpstreamError(RouterError):
    """The endpoint a request was forwarded to failed it."""

    code: ClassVar[str] = "upstream_error"
    http_status: ClassVar[int] = 502

    def __init__(
        self, message: str, /, *, sfe: str, endpoint: str, before_response: bool = True
    ) -> None:
        super().__init__(message, sfe=sfe, endpoint=endpoint)
        self.sfe = sfe
        self.endpoint = endpoint
        self.before_response = before_response


# The network had no path to the address (this host's routes, or an ICMP unreachable from a
# router on the way): says nothing about the endpoint, and routes converge in milliseconds.
NETWORK_ERRNOS: Final = frozenset({_errno.ENETUNREACH, _errno.EHOSTUNREACH})


class UpstreamConnectError(UpstreamError):
    """Nothing reached the endpoint: a 503 to try again later (`retry_after` seconds)."""

    code: ClassVar[str] = "upstream_unreachable"
    http_status: ClassVar[int] = 503
    retry_after: int = 1  # set by the forwarding from the ejections it knows of
    errno: int | None = None  # the failed connect's OS error number, if it had one

    @property
    def network_refused(self) -> bool:
        """The network refused the path (ENETUNREACH, EHOSTUNREACH), not the endpoint."""
        return self.errno in NETWORK_ERRNOS


class UpstreamTlsError(UpstreamConnectError):
    """Hop-by-hop TLS to the endpoint failed (its certificate is not the platform's for its
    address, it refused the SR's identity, or the SR has none yet): nothing was sent, as for
    a connect error (ejected, retried elsewhere), but a 502: a wrong endpoint, not a busy one."""

    code: ClassVar[str] = "upstream_tls_failed"
    http_status: ClassVar[int] = 502


class UpstreamBusy(UpstreamError):
    code: ClassVar[str] = "upstream_busy"
    http_status: ClassVar[int] = 503
    retry_after: int = 1


class UpstreamTimeout(UpstreamError):
    code: ClassVar[str] = "upstream_timeout"
    http_status: ClassVar[int] = 504


class UpstreamReset(UpstreamError):
    code: ClassVar[str] = "upstream_reset"


class UpstreamProtocolError(UpstreamError):
    code: ClassVar[str] = "bad_upstream_response"
