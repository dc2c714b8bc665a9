"""The HTTP protocol the CLMC serves with: uvicorn's, with InfluxDB-shaped answers to requests
uvicorn refuses before the app sees them.

uvicorn answers a request it cannot parse (a request line over 64 KiB, malformed HTTP) with a
plain-text `400 Invalid HTTP request received.`; InfluxDB's clients expect `{"error": ...}`.
With `http=influx_http_protocol()` in `uvicorn.Config` the same cases get a JSON body: 431
`Request Header Fields Too Large` for an oversized request line (as InfluxDB answers one over
its 1 MB header limit), 400 for anything else.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["OVERSIZED", "influx_http_protocol"]

OVERSIZED = 65535  # the longest URL uvicorn's parser (httptools.parse_url) takes


def _response(status: int, reason: str, message: str, default_headers: Any) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"x-influxdb-version: 1.6.7-flame\r\n",
        b"x-influxdb-error: " + message.encode("ascii", "replace") + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def influx_http_protocol() -> type[Any]:
    """uvicorn's HTTP protocol class (httptools if installed, else h11), answering requests it
    cannot parse InfluxDB-shaped."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import (  # noqa: PLC0415 - optional, heavy
            HttpToolsProtocol,
        )

        base = HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

        base = H11Protocol

    class InfluxHttpProtocol(base):  # type: ignore[misc]
        def send_400_response(self, msg: str) -> None:
            url = getattr(self, "url", b"") or b""
            if len(url) > OVERSIZED:
                data = _response(
                    431,
                    "Request Header Fields Too Large",
                    "Request Header Fields Too Large",
                    self.server_state.default_headers,
                )
            else:
                data = _response(
                    400, "Bad Request", f"bad request: {msg}", self.server_state.default_headers
                )
            self.transport.write(data)
            self.transport.close()

    return InfluxHttpProtocol
