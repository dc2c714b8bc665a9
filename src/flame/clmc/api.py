"""The CLMC's InfluxDB 1.x HTTP API (CLMC-8, 16): `/ping`, `/write`, `/api/v2/write`, `/query`;
the configuration store's routes (`/v1/config/...`, CLMC-3: `flame.clmc.config_api`).

Telegraf, the `influx` CLI, client libraries and Grafana talk to it unchanged. Status codes and
`{"error": ...}` texts are InfluxDB 1.6's (checked against the real server in
`tests/clmc/test_influx_compat.py`); we add `"line"` (1-based, in the decompressed body) to
write errors. Intentional differences: an unknown retention policy is 404, not 500; unsigned
integers (`1u`) are accepted; `/api/v2/write` exists (InfluxDB 1.8+).

Security (issue 11): with a `TokenStore`, every route but `/ping` and `/health` needs a FLAME
token, given the InfluxDB ways (`?u=NAME&p=TOKEN`, Basic auth with the token as password) or as
`Authorization: Token X` or `Bearer X`; it is checked on every request (a revoked token fails
on the next one). Each route declares who may call it (`flame.common.access` gates; the app
refuses to build with an undeclared route):

* the operator may do anything;
* a tenant owns the databases named after its tenant id, `<tenant>` itself or
  `<tenant>_<anything>` (tenant ids cannot contain `_`, so the owner of a name is never
  ambiguous): it writes, queries, creates and drops only those, reads the platform database
  `flame` narrowed to the rows of the FQDNs delegated to it (`flame.clmc.tenancy`), and
  SHOW DATABASES lists its own databases and `flame`;
* a router (an SR) writes measurements to `flame` and does nothing else.

Queries, plain and chunked, are authorized as a whole before any statement runs
(`influxql.scope.authorize`); refusals are InfluxDB-shaped, `{"error": ...}` with 401 or 403.
Without a `TokenStore` (tests, a laptop, `flame serve clmc --no-auth`) the API is open: every
caller acts as the operator, and the app logs a warning saying so.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from flame.clmc import influxql
from flame.clmc.config_api import install_config_routes
from flame.clmc.errors import DatabaseNotFound, Overloaded, RetentionPolicyNotFound
from flame.clmc.influxql.scope import Access, authorize
from flame.clmc.ingest import Ingest
from flame.clmc.tenancy import PLATFORM_DATABASE, Delegations, access_for
from flame.common.access import (
    PRINCIPAL_KEY,
    PUBLIC,
    Gate,
    TenantOrOperator,
    require_declared,
    set_principal,
)
from flame.common.auth import Principal, Role, TokenStore
from flame.common.errors import AuthenticationError, FlameError, UserError

if TYPE_CHECKING:
    from flame.clmc.alerts.service import AlertService

__all__ = [
    "INFLUX_VERSION",
    "OPEN_PRINCIPAL",
    "PLATFORM_DATABASE",
    "InfluxAuth",
    "create_app",
    "install_influx_errors",
    "may_write",
    "run_query",
]

log = logging.getLogger("flame.clmc.api")

INFLUX_VERSION = "1.6.7-flame"
_HEADERS = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": "FLAME"}
_V2_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_COUNT = re.compile(r"[0-9]{1,18}")


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    headers = dict(_HEADERS)
    # A header must be printable ASCII: InfluxDB's texts quote raw line bytes.
    safe = "".join(c if " " <= c <= "~" else " " if c in "\r\n\t" else "?" for c in message[:1000])
    headers["X-Influxdb-Error"] = safe
    if status in (429, 503):
        headers["Retry-After"] = str(extra.pop("retry_after", 1))
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


# Who a caller is when authentication is off (`--no-auth`, tests): the API is open.
OPEN_PRINCIPAL = Principal(name="anonymous", role=Role.OPERATOR)

_AUTH_FAILURE = "flame.clmc.auth_failure"  # (status, InfluxDB's message) left by InfluxAuth

Writer = Annotated[
    Principal,
    Depends(
        Gate(
            {Role.OPERATOR, Role.TENANT, Role.ROUTER},
            "a tenant: its own databases; a router: the platform database `flame` only",
        )
    ),
]
"""/write and /api/v2/write: which database is checked inside (`may_write`)."""


def may_write(principal: Principal, database: str) -> bool:
    """Whether `principal` may write points to `database`."""
    if principal.role is Role.OPERATOR:
        return True
    if principal.role is Role.ROUTER:
        return database == PLATFORM_DATABASE  # the SRs report there, and only there
    access = access_for(principal, None)
    return access is not None and access.may_change(database)


def run_query(
    ingest: Ingest,
    text: str,
    db: str | None,
    epoch: str | None,
    params: dict[str, object],
    access: Access | None = None,
) -> dict[str, object]:
    """Run InfluxQL for `/query` with the caller's rights (None: the operator's); raises
    ParseError (400) and `Unauthorized` (403) before running anything."""
    statements = influxql.parse(text, params)
    if any(type(s).__name__.startswith(("Drop", "Delete")) for s in statements):
        # Settle writes already acknowledged first, and let ingest re-read field types after.
        ingest.wait_applied()
        body = influxql.execute(ingest.store, text, db, epoch, params, access=access)
        ingest.forget_types()
    else:
        body = influxql.execute(ingest.store, text, db, epoch, params, access=access)
    return body


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class InfluxAuth:
    """Authentication the InfluxDB ways, on every request, before routing.

    A valid token puts its principal in the scope (`set_principal`) for the routes' gates; no
    token or a bad one leaves none, and the gate of any route but a public one answers 401 with
    InfluxDB's text. Tokens are checked against the store each time (no cache): a revoked or
    expired token fails on the next request. Without a store every caller is `OPEN_PRINCIPAL`.
    """

    def __init__(self, app: ASGIApp, tokens: TokenStore | None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.authenticate(scope)
        await self.app(scope, receive, send)

    def authenticate(self, scope: Scope) -> None:
        if self.tokens is None:
            set_principal(scope, OPEN_PRINCIPAL)
            return
        token = _credentials(Headers(scope=scope), QueryParams(scope.get("query_string", b"")))
        if token is None:
            scope[_AUTH_FAILURE] = (401, "unable to parse authentication credentials")
            return
        try:
            set_principal(scope, self.tokens.authenticate(token))
        except AuthenticationError:
            scope[_AUTH_FAILURE] = (401, "authorization failed")
        except FlameError as exc:  # an unusable token store: our fault, not the caller's
            log.error("cannot check a token: %s", exc.message)
            scope[_AUTH_FAILURE] = (500, "cannot check credentials; see the CLMC log")


def _credentials(headers: Headers, query: QueryParams) -> str | None:
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return query.get("p") or None


def install_influx_errors(app: FastAPI, *, failure_key: str = _AUTH_FAILURE) -> None:
    """Gate refusals and other FLAME errors as InfluxDB answers them: `{"error": ...}`; a
    refused authentication with what the middleware left under `failure_key`."""

    async def flame_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FlameError)
        if isinstance(exc, AuthenticationError) and PRINCIPAL_KEY not in request.scope:
            status, message = request.scope.get(
                failure_key, (401, "unable to parse authentication credentials")
            )
            return _error(status, message)
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return _error(exc.http_status, exc.message)

    app.add_exception_handler(FlameError, flame_error)


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
    delegations: Delegations | None = None,
    alerts: AlertService | None = None,
) -> FastAPI:
    """The InfluxDB-compatible app over a started `Ingest`, or a function giving the one that
    `lifespan` starts (the app never starts or stops an ingest itself).

    `delegations` tell which FQDNs are each tenant's (none: tenants see no row of `flame`);
    `alerts` adds the alerting routes (`/v1/alerts...`)."""
    current: Callable[[], Ingest] = (lambda: ingest) if isinstance(ingest, Ingest) else ingest
    app = FastAPI(
        title="FLAME CLMC",
        version=INFLUX_VERSION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    if tokens is None:
        log.warning(
            "the CLMC API runs WITHOUT authentication: every caller may read, write and drop "
            "every database (--no-auth; never on a shared network)"
        )
    app.add_middleware(InfluxAuth, tokens=tokens)
    install_influx_errors(app)
    _install_error_handlers(app)
    _install_public_routes(app, current, tokens, delegations)
    _install_write_routes(app, current, max_body_bytes, max_inflight_writes)
    _install_query_route(app, current, delegations)
    if alerts is not None:
        from flame.clmc.alerts.api import install_alert_routes  # noqa: PLC0415 - optional

        install_alert_routes(app, alerts, delegations=delegations)
    # The configuration store (CLMC-3): template, policy and topology versions over time
    install_config_routes(app, lambda: current().store)
    return require_declared(app)


def _install_error_handlers(app: FastAPI) -> None:
    """Every answer InfluxDB-shaped (`{"error": ...}`), unexpected errors logged."""

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}; see the CLMC log")

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405, ...: InfluxDB-shaped like every other answer (`{"error": ...}`)
        text = "404 page not found" if exc.status_code == 404 else str(exc.detail)
        response = _error(exc.status_code, text)
        response.headers.update(exc.headers or {})
        return response


def _install_public_routes(
    app: FastAPI,
    current: Callable[[], Ingest],
    tokens: TokenStore | None,
    delegations: Delegations | None,
) -> None:
    """/ping and /health, open to anyone (`PUBLIC`)."""

    @app.api_route("/ping", methods=["GET", "HEAD"], include_in_schema=False, dependencies=[PUBLIC])
    async def ping(request: Request) -> Response:
        if request.query_params.get("verbose", "").lower() in ("true", "1"):
            return JSONResponse({"version": INFLUX_VERSION}, headers=_HEADERS)
        return Response(status_code=204, headers=_HEADERS)

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        """Liveness, whether tokens are checked, and the state of the delegations."""
        return {
            "status": "ok",
            "version": INFLUX_VERSION,
            "auth": "open" if tokens is None else "tokens",
            "delegations": (
                {"source": None, "state": "none"} if delegations is None else delegations.health()
            ),
            # backlog, apply lag, rows the store refused and set aside (issue 12)
            "ingest": _ingest_health(current),
        }


def _install_write_routes(
    app: FastAPI,
    current: Callable[[], Ingest],
    max_body_bytes: int,
    max_inflight_writes: int,
) -> None:
    """/write (v1) and /api/v2/write, for `Writer`s, with a bound on concurrent writes."""
    inflight = 0

    async def write(
        request: Request,
        caller: Principal,
        db: str | None,
        rp: str | None,
        precision: str | None,
    ) -> Response:
        nonlocal inflight
        if not db:
            return _error(400, "database is required")
        if not may_write(caller, db):
            return _error(
                403, f'"{caller.name}" user is not authorized to write to database "{db}"'
            )
        try:
            current().check_target(db, rp)
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
    async def write_v1(request: Request, caller: Writer) -> Response:
        q = request.query_params
        return await write(request, caller, q.get("db"), q.get("rp"), q.get("precision"))

    @app.post("/api/v2/write", include_in_schema=False)
    async def write_v2(request: Request, caller: Writer) -> Response:
        q = request.query_params
        bucket = q.get("bucket") or ""
        db, _, rp = bucket.partition("/")
        precision = q.get("precision") or "ns"
        if precision not in _V2_PRECISION:
            return _error(400, f'invalid precision "{precision}": use ns, us, ms or s')
        return await write(request, caller, db or None, rp or None, _V2_PRECISION[precision])


def _install_query_route(
    app: FastAPI, current: Callable[[], Ingest], delegations: Delegations | None
) -> None:
    """/query (GET and POST), for tenants and the operator."""

    @app.api_route("/query", methods=["GET", "POST"], include_in_schema=False)
    async def query(request: Request, caller: TenantOrOperator) -> Response:
        params: dict[str, str] = dict(request.query_params)
        if request.method == "POST" and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        access = access_for(caller, delegations)
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
        try:
            # The whole request, before anything waits or runs, chunked or not (the engine
            # checks the same again with the same function).
            authorize(influxql.parse(text, bind), db, access)
        except UserError as exc:  # 400 for bad text, 403 (Unauthorized) for a refusal
            return _error(exc.http_status, exc.message)
        # Queries do not wait for a write backlog; `read_your_writes=true` waits for every
        # write acknowledged so far (Ingest.before_query, docs/clmc-query.md)
        ryw = params.get("read_your_writes", "").lower() in ("true", "1")
        await anyio.to_thread.run_sync(current().before_query, ryw)
        if params.get("chunked") == "true":
            # As InfluxDB: a chunk_size that is no positive integer means the default
            raw_size = params.get("chunk_size") or ""
            size = int(raw_size) if _COUNT.fullmatch(raw_size) else 0
            size = size if size > 0 else influxql.DEFAULT_CHUNK_SIZE
            try:
                chunks = await anyio.to_thread.run_sync(
                    lambda: influxql.execute_chunked(
                        current().store, text, db, epoch, bind, chunk_size=size, access=access
                    )
                )
            except UserError as exc:
                return _error(exc.http_status, exc.message)
            return StreamingResponse(
                _stream(chunks), media_type="application/json", headers=_HEADERS
            )
        try:
            body = await anyio.to_thread.run_sync(
                run_query, current(), text, db, epoch, bind, access
            )
        except UserError as exc:
            return _error(exc.http_status, exc.message)
        except FlameError as exc:
            return _error(500, exc.message)
        _go_numbers(body)
        content = json.dumps(
            body, indent=4 if pretty else None, separators=None if pretty else (",", ":")
        )
        return Response(content + "\n", media_type="application/json", headers=_HEADERS)


def _ingest_health(current: Callable[[], Ingest]) -> dict[str, object]:
    try:
        stats = current().stats()
    except RuntimeError:  # not started yet
        return {"state": "starting"}
    return {k: v for k, v in stats.items() if k != "quarantine_dir"}


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
