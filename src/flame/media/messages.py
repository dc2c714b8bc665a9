"""Requests and responses of the media servers, and the helpers both servers share.

A `Request` holds what the parser saw (method, decoded path, query, lower-case headers); a
`Response` is a status, headers and a body in memory (HLS objects are small, and a body in one
buffer goes to the socket in one write). Errors are JSON: ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from flame.media.ranges import UNSATISFIABLE, ByteRange, content_range, parse_range

__all__ = [
    "Request",
    "Response",
    "error",
    "etag_matches",
    "http_date",
    "json_response",
    "not_modified",
    "parse_http_date",
    "select",
]


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: str
    headers: dict[str, str]  # names in lower case; repeated fields joined with ", "
    target: str = "/"  # the raw request target, forwarded as is by the cache
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # A HEAD answer (or a 304) states the length of the body it does not send.
    content_length: int | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def json_response(status: int, doc: Any, *, cache_control: str = "no-store") -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    return Response(
        status, [("Content-Type", "application/json"), ("Cache-Control", cache_control)], body
    )


def error(
    status: int, code: str, message: str, *, cache_control: str = "no-store", **context: Any
) -> Response:
    """A JSON error answer; `context` adds machine-readable fields (never a traceback)."""
    doc = {"error": code, "message": message, **context}
    return json_response(status, doc, cache_control=cache_control)


_date_cache: tuple[int, str] = (0, "")


def http_date(ts: float | None = None) -> str:
    """An IMF-fixdate; the current one is formatted once per second."""
    global _date_cache  # noqa: PLW0603 - a one-entry cache of a pure function
    if ts is not None:
        return formatdate(ts, usegmt=True)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison of If-None-Match against our ETag (RFC 9110 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == ours for tag in if_none_match.split(","))


def not_modified(req: Request, etag: str | None, last_modified: float | None) -> bool:
    """Whether a GET/HEAD may be answered 304 (If-None-Match wins over If-Modified-Since)."""
    inm = req.headers.get("if-none-match")
    if inm is not None:
        return etag is not None and etag_matches(inm, etag)
    since = parse_http_date(req.headers.get("if-modified-since"))
    return since is not None and last_modified is not None and int(last_modified) <= since


def select(req: Request, body: bytes, headers: list[tuple[str, str]], etag: str | None) -> Response:
    """Answer a GET or HEAD for `body`: 200, 206 for a satisfiable range, 416 for another.

    Range applies to GET only (RFC 9110 14.2); `If-Range` with another validator, or a date,
    makes the request unconditional (we only compare strong ETags, so a date never matches).
    """
    size = len(body)
    headers = [*headers, ("Accept-Ranges", "bytes")]
    raw = req.headers.get("range") if req.method == "GET" else None
    if raw is not None:
        if_range = req.headers.get("if-range")
        if if_range is not None and (etag is None or if_range.strip() != etag):
            raw = None
    selected = parse_range(raw, size)
    if selected is None:
        return Response(200, headers, body if req.method == "GET" else b"", size)
    if selected is UNSATISFIABLE or not isinstance(selected, ByteRange):
        resp = error(416, "range_not_satisfiable", f"no byte of {raw!r} lies in 0-{size - 1}")
        resp.headers.append(("Content-Range", content_range(UNSATISFIABLE, size)))
        return resp
    headers.append(("Content-Range", content_range(selected, size)))
    return Response(206, headers, body[selected.slice()], selected.length)
