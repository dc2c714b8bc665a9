"""The CLMC's InfluxDB 1.x HTTP API (CLMC-8, 16): `/ping`, `/write`, `/api/v2/write`, `/query`.

Telegraf, the `influx` CLI, client libraries and Grafana talk to it unchanged. Status codes and
`{"error": ...}` texts are InfluxDB 1.6's (checked against the real server in
`tests/clmc/test_influx_compat.py`); we add `"line"` (1-based, in the decompressed body) to
write errors. Intentional differences: an unknown retention policy is 404, not 500; unsigned
integers (`1u`) are accepted; `/api/v2/write` exists (InfluxDB 1.8+).

Security: with a `TokenStore`, every route but `/ping` needs a FLAME token, given the InfluxDB
ways (`?u=NAME&p=TOKEN`, Basic auth with the token as password) or as `Authorization: Token X`
or `Bearer X`. Operators may do anything. A tenant owns the databases named after its tenant id:
`<tenant>` itself or `<tenant>_<anything>` (tenant ids cannot contain `_`, so the owner of a name
is never ambiguous); it may write, query, create and drop only those, and SHOW DATABASES lists
only those. Without a `TokenStore` (tests, a laptop) the API is open.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from flame.clmc import influxql
from flame.clmc.errors import DatabaseNotFound, Overloaded, RetentionPolicyNotFound
from flame.clmc.ingest import Ingest
from flame.common.auth import Principal, Role, TokenStore
from flame.common.errors import AuthenticationError, FlameError, UserError

__all__ = ["INFLUX_VERSION", "create_app", "run_query"]

log = logging.getLogger("flame.clmc.api")

INFLUX_VERSION = "1.6.7-flame"
_HEADERS = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": "FLAME"}
_V2_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    headers = dict(_HEADERS)
    # A header must be printable ASCII: InfluxDB's texts quote raw line bytes.
    safe = "".join(c if " " <= c <= "~" else " " if c in "\r\n\t" else "?" for c in message[:1000])
    headers["X-Influxdb-Error"] = safe
    if status in (429, 503):
        headers["Retry-After"] = str(extra.pop("retry_after", 1))
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


PLATFORM_DATABASE = "flame"  # where the service routers report (docs/clmc-information-model.md)


def owns(principal: Principal | None, database: str) -> bool:
    """Whether `principal` may use `database` (None = auth disabled)."""
    if principal is None or principal.role is Role.OPERATOR:
        return True
    if principal.role is Role.ROUTER:
        return False  # routers only write, and only to the platform database (may_write)
    tenant = principal.tenant or ""
    return database == tenant or database.startswith(tenant + "_")


def may_write(principal: Principal | None, database: str) -> bool:
    """Reading rights, plus a service router's measurements to the platform database."""
    if principal is not None and principal.role is Role.ROUTER:
        return database == PLATFORM_DATABASE
    return owns(principal, database)


def run_query(
    ingest: Ingest,
    text: str,
    db: str | None,
    epoch: str | None,
    params: dict[str, object],
    principal: Principal | None = None,
) -> dict[str, object]:
    """Run InfluxQL for `/query` (the InfluxQL engine does the work; we add tenant rules)."""
    statements = influxql.parse(text, params)
    if principal is not None and principal.role is Role.TENANT:
        for name in _databases_named(statements, db):
            if not owns(principal, name):
                raise _Denied(
                    403, f'"{principal.name}" user is not authorized to use database "{name}"'
                )
    if any(type(s).__name__.startswith(("Drop", "Delete")) for s in statements):
        # Settle writes already acknowledged first, and let ingest re-read field types after.
        ingest.wait_applied()
        body = influxql.execute(ingest.store, text, db, epoch, params)
        ingest.forget_types()
    else:
        body = influxql.execute(ingest.store, text, db, epoch, params)
    if principal is not None and principal.role is Role.TENANT:
        _filter_databases(body, principal)
    return body


def _databases_named(statements: Sequence[object], db: str | None) -> set[str]:
    names: set[str] = set()
    for stmt in statements:
        found = set(_walk_databases(stmt))
        if not found and not type(stmt).__name__.startswith("ShowDatabases"):
            if db is None:
                continue
            found.add(db)
        names |= found
    return names


def _walk_databases(node: object) -> Iterator[str]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, str) and (
                f.name == "database"
                or (f.name == "name" and type(node).__name__ in _NAMES_A_DATABASE)
            ):
                yield value
            else:
                yield from _walk_databases(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _walk_databases(item)


_NAMES_A_DATABASE = ("CreateDatabase", "DropDatabase")


def _filter_databases(body: dict[str, object], principal: Principal) -> None:
    for result in body.get("results", []) or []:  # type: ignore[attr-defined]
        for series in result.get("series", []) or []:
            if series.get("name") == "databases":
                series["values"] = [v for v in series.get("values", []) if owns(principal, v[0])]


class _Auth:
    """Token checks with a short cache (the token file is read at most every few seconds)."""

    def __init__(self, tokens: TokenStore | None, ttl_s: float = 5.0) -> None:
        self.tokens = tokens
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    def principal(self, request: Request) -> Principal | None:
        if self.tokens is None:
            return None
        token = _credentials(request)
        if token is None:
            raise _Denied(401, "unable to parse authentication credentials")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            principal = self.tokens.authenticate(token)
        except AuthenticationError:
            raise _Denied(401, "authorization failed") from None
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[token] = (now + self._ttl, principal)
        return principal


def _credentials(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return request.query_params.get("p") or None


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The decompressed body, or the error response InfluxDB would give."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _error(413, "Request Entity Too Large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, "Request Entity Too Large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        return _gunzip(body, limit)
    return body


def _gunzip(data: bytes, limit: int) -> bytes | JSONResponse:
    if len(data) < 10:
        return _error(400, "unexpected EOF")
    if data[:2] != b"\x1f\x8b":
        return _error(400, "gzip: invalid header")
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        return _error(400, "gzip: invalid checksum")
    if len(out) > limit:
        return _error(413, "Request Entity Too Large")
    if not d.eof:
        return _error(400, "unexpected EOF")
    return out


def create_app(
    ingest: Ingest | Callable[[], Ingest],
    tokens: TokenStore | None = None,
    *,
    max_body_bytes: int = 25_000_000,
    max_inflight_writes: int = 64,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    """The InfluxDB-compatible app over a started `Ingest`, or a function giving the one that
    `lifespan` starts (the app never starts or stops an ingest itself)."""
    current: Callable[[], Ingest] = (lambda: ingest) if isinstance(ingest, Ingest) else ingest
    app = FastAPI(
        title="FLAME CLMC",
        version=INFLUX_VERSION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    auth = _Auth(tokens)
    inflight = 0

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}; see the CLMC log")

    @app.api_route("/ping", methods=["GET", "HEAD"], include_in_schema=False)
    async def ping(request: Request) -> Response:
        if request.query_params.get("verbose", "").lower() in ("true", "1"):
            return JSONResponse({"version": INFLUX_VERSION}, headers=_HEADERS)
        return Response(status_code=204, headers=_HEADERS)

    async def write(
        request: Request, db: str | None, rp: str | None, precision: str | None
    ) -> Response:
        nonlocal inflight
        try:
            principal = auth.principal(request)
            if not db:
                return _error(400, "database is required")
            if not may_write(principal, db):
                assert principal is not None
                raise _Denied(
                    403, f'"{principal.name}" user is not authorized to write to database "{db}"'
                )
            current().check_target(db, rp)
        except _Denied as exc:
            return _error(exc.status, exc.message)
        except (DatabaseNotFound, RetentionPolicyNotFound) as exc:
            return _error(404, exc.message)
        if inflight >= max_inflight_writes:
            return _error(429, "too many concurrent writes; retry shortly", retry_after=1)
        inflight += 1
        try:
            body = await _read_body(request, max_body_bytes)
            if isinstance(body, JSONResponse):
                return body
            outcome = await anyio.to_thread.run_sync(current().write, db, rp, body, precision)
        except Overloaded as exc:
            return _error(503, exc.message, retry_after=exc.retry_after_s)
        except (DatabaseNotFound, RetentionPolicyNotFound) as exc:
            return _error(404, exc.message)
        except OSError as exc:
            log.error("write-ahead log failed: %s", exc)
            return _error(
                503, "the write-ahead log is failing; the write was not stored", retry_after=5
            )
        finally:
            inflight -= 1
        message = outcome.error()
        if message is None:
            return Response(status_code=204, headers=_HEADERS)
        return _error(400, message, line=outcome.error_line())

    @app.post("/write", include_in_schema=False)
    async def write_v1(request: Request) -> Response:
        q = request.query_params
        return await write(request, q.get("db"), q.get("rp"), q.get("precision"))

    @app.post("/api/v2/write", include_in_schema=False)
    async def write_v2(request: Request) -> Response:
        q = request.query_params
        bucket = q.get("bucket") or ""
        db, _, rp = bucket.partition("/")
        precision = q.get("precision") or "ns"
        if precision not in _V2_PRECISION:
            return _error(400, f'invalid precision "{precision}": use ns, us, ms or s')
        return await write(request, db or None, rp or None, _V2_PRECISION[precision])

    @app.api_route("/query", methods=["GET", "POST"], include_in_schema=False)
    async def query(request: Request) -> Response:
        params: dict[str, str] = dict(request.query_params)
        if request.method == "POST" and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        try:
            principal = auth.principal(request)
        except _Denied as exc:
            return _error(exc.status, exc.message)
        text = params.get("q")
        if not text:
            return _error(400, 'missing required parameter "q"')
        try:
            bind = json.loads(params["params"]) if params.get("params") else {}
        except json.JSONDecodeError as exc:
            return _error(400, f"error parsing query parameters: {exc}")
        if not isinstance(bind, dict):
            return _error(400, "error parsing query parameters: expected a JSON object")
        db = params.get("db") or None
        epoch = params.get("epoch") or None
        pretty = params.get("pretty") == "true"
        await anyio.to_thread.run_sync(current().wait_applied)
        if params.get("chunked") == "true":
            size = int(params.get("chunk_size") or influxql.DEFAULT_CHUNK_SIZE)
            try:
                chunks = await anyio.to_thread.run_sync(
                    lambda: influxql.execute_chunked(
                        current().store, text, db, epoch, bind, chunk_size=size
                    )
                )
            except UserError as exc:
                return _error(400, exc.message)
            return StreamingResponse(
                _stream(chunks), media_type="application/json", headers=_HEADERS
            )
        try:
            body = await anyio.to_thread.run_sync(
                run_query, current(), text, db, epoch, bind, principal
            )
        except _Denied as exc:
            return _error(exc.status, exc.message)
        except UserError as exc:
            return _error(400, exc.message)
        except FlameError as exc:
            return _error(500, exc.message)
        _go_numbers(body)
        content = json.dumps(
            body, indent=4 if pretty else None, separators=None if pretty else (",", ":")
        )
        return Response(content + "\n", media_type="application/json", headers=_HEADERS)

    return app


def _go_numbers(body: dict[str, object]) -> None:
    """Write integral floats as InfluxDB (Go) does, `1` not `1.0`, so clients see the same text."""
    for result in body.get("results", []) or []:  # type: ignore[attr-defined]
        for series in result.get("series", []) or []:
            for row in series.get("values", []) or []:
                for i, v in enumerate(row):
                    if type(v) is float and v.is_integer() and abs(v) < 1e21:
                        row[i] = int(v)


async def _stream(chunks: Iterator[dict[str, object]]) -> AsyncIterator[bytes]:
    sentinel: Any = object()
    while True:
        item = await anyio.to_thread.run_sync(next, chunks, sentinel)
        if item is sentinel:
            return
        _go_numbers(item)
        yield (json.dumps(item, separators=(",", ":")) + "\n").encode()
