"""`create_dashboard_app`: the page, and `GET /api/snapshot` assembled from the platform's APIs.

The dashboard holds no privilege of its own: the browser sends its token (taken from the URL
fragment `#token=...`, which never reaches a server log), and each upstream call carries it.
Upstreams are queried concurrently; one that is down leaves its part empty and is named in
`errors`, so the page keeps working with what it has.

Every `/api` request is authenticated before anything else: the token is checked with the
orchestrator's `GET /v1/whoami` on every request (no cache, so a revoked or expired token stops
working at once), and the caller it names is what the routes' access gates see (page and
static files: public; `/api/*`: a tenant or the operator). A bad token is a 401 with no content;
when the orchestrator cannot say, a 503. What a tenant sees is what the upstreams give its token:
its own services, alerts and events, and the rows of the platform database `flame` for its own
FQDNs (where the CLMC refuses that, the KPI chart says so and the rest of the page still works).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers

from flame.common.access import PUBLIC, TenantOrOperator, require_declared, set_principal
from flame.common.auth import Principal, Role, parse_bearer
from flame.common.errors import AuthenticationError, FlameError
from flame.common.http_api import error_response, install_errors

__all__ = ["DashboardConfig", "create_dashboard_app"]

_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

KPI_QUERY = (
    'SELECT mean("response_time") AS "response_time", mean("path_latency") AS "path_latency", '
    'sum("requests") AS "requests" '
    'FROM "sr_fqdn" WHERE time > now() - {window}s GROUP BY time(1s), "sr", "fqdn" fill(none)'
)
SERVED_QUERY = (
    'SELECT sum("requests") AS "requests" FROM "sr_requests" WHERE time > now() - {window}s '
    'GROUP BY time(1s), "sfe", "cluster" fill(none)'
)


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    pce_url: str | None = None
    clmc_url: str | None = None
    orchestrator_url: str | None = None
    clmc_db: str = "flame"
    window_s: int = 300  # the KPI chart's span
    timeout_s: float = 2.0


class TokenCheckUnavailable(FlameError):
    """The orchestrator, which knows the tokens, could not be asked (503, retry)."""

    code: ClassVar[str] = "token_check_unavailable"
    http_status: ClassVar[int] = 503


def _asset(name: str) -> bytes:
    return (resources.files("flame.clmc.dashboard") / "static" / name).read_bytes()


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Verify = Callable[[str], Awaitable[Principal]]


class WhoamiAuth:
    """Authenticate every `/api` request with the orchestrator before routing."""

    def __init__(self, app: ASGIApp, verify: Verify) -> None:
        self.app = app
        self.verify = verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/api" or path.startswith("/api/")):
            await self.app(scope, receive, send)
            return
        try:
            header = Headers(scope=scope).get("authorization")
            if not header:
                raise AuthenticationError(
                    "missing Authorization header; open the dashboard URL that 'flame up' "
                    "printed (it carries #token=...), or paste a token"
                )
            set_principal(scope, await self.verify(parse_bearer(header)))
        except FlameError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def whoami(http: httpx.AsyncClient, orchestrator_url: str | None, token: str) -> Principal:
    """Who `token` belongs to, as the orchestrator says now (401 if no one)."""
    if orchestrator_url is None:
        raise TokenCheckUnavailable("no orchestrator configured: the dashboard cannot check tokens")
    try:
        response = await http.get(
            orchestrator_url.rstrip("/") + "/v1/whoami",
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        raise TokenCheckUnavailable(
            f"cannot check the token: the orchestrator is unreachable ({type(exc).__name__})"
        ) from None
    if 400 <= response.status_code < 500:
        raise AuthenticationError(_upstream_message(response) or "the token was not accepted")
    if response.status_code != 200:
        raise TokenCheckUnavailable(
            f"cannot check the token: the orchestrator answered HTTP {response.status_code}"
        )
    try:
        body = response.json()
        return Principal(str(body["name"]), Role(body["role"]), body.get("tenant"))
    except (ValueError, KeyError, TypeError, FlameError):
        raise TokenCheckUnavailable(
            "cannot check the token: the orchestrator's answer is not a principal"
        ) from None


def _upstream_message(response: httpx.Response) -> str:
    try:
        detail = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("error") or "")
    return str(detail)[:200]


def create_dashboard_app(
    config: DashboardConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """`transport` (tests) replaces the network for every upstream call."""
    client: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if "c" in client:
            await client["c"].aclose()

    app = FastAPI(
        title="FLAME dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    def http() -> httpx.AsyncClient:
        if "c" not in client:
            client["c"] = httpx.AsyncClient(
                timeout=config.timeout_s, trust_env=False, transport=transport
            )
        return client["c"]

    async def verify(token: str) -> Principal:
        return await whoami(http(), config.orchestrator_url, token)

    app.add_middleware(WhoamiAuth, verify=verify)
    install_errors(app, "the dashboard")

    def bearer(request: Request) -> str:
        # WhoamiAuth has parsed and checked it; passed on unchanged to each upstream.
        return "Bearer " + parse_bearer(request.headers.get("authorization"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=[PUBLIC])
    async def index() -> Response:
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False, dependencies=[PUBLIC])
    async def static(name: str) -> Response:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or suffix not in _STATIC_TYPES:
            return JSONResponse({"error": f"no such file {name!r}"}, status_code=404)
        try:
            return Response(_asset(name), media_type=_STATIC_TYPES[suffix])
        except FileNotFoundError:
            return JSONResponse({"error": f"no such file {name!r}"}, status_code=404)

    @app.get("/api/query")
    async def query(
        request: Request, caller: TenantOrOperator, q: str = "", db: str = ""
    ) -> Response:
        """Any InfluxQL, run by the CLMC as the caller (CLMC-17); its answer as it is."""
        if config.clmc_url is None:
            return JSONResponse({"error": "no CLMC configured"}, status_code=503)
        try:
            response = await http().get(
                config.clmc_url.rstrip("/") + "/query",
                params={"q": q, "db": db, "epoch": "ms"},
                headers={"Authorization": bearer(request)},
            )
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"error": f"the CLMC is unreachable: {type(exc).__name__}"}, status_code=502
            )
        return Response(
            response.content, status_code=response.status_code, media_type="application/json"
        )

    @app.get("/api/snapshot")
    async def snapshot(request: Request, caller: TenantOrOperator) -> Response:
        body = await gather(http(), config, bearer(request))
        body["whoami"] = {"name": caller.name, "role": caller.role.value, "tenant": caller.tenant}
        return JSONResponse(body)

    return require_declared(app)


async def gather(http: httpx.AsyncClient, config: DashboardConfig, auth: str) -> dict[str, Any]:
    headers = {"Authorization": auth}
    errors: dict[str, str] = {}

    async def get(name: str, base: str | None, path: str, **params: str) -> Any:
        if base is None:
            return None
        try:
            response = await http.get(base.rstrip("/") + path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            errors[name] = f"{base} unreachable: {type(exc).__name__}"
            return None
        if response.status_code >= 400:
            errors[name] = f"HTTP {response.status_code}: {_upstream_message(response)}"
            return None
        return response.json()

    window = str(config.window_s)
    parts = await asyncio.gather(
        get("topology", config.pce_url, "/v1/topology"),
        get("registrations", config.pce_url, "/v1/registrations"),
        get("services", config.orchestrator_url, "/v1/services"),
        get("alerts", config.clmc_url, "/v1/alerts"),
        get("events", config.clmc_url, "/v1/alerts/events", limit="200"),
        get(
            "kpi",
            config.clmc_url,
            "/query",
            db=config.clmc_db,
            q=KPI_QUERY.format(window=window),
            epoch="ms",
        ),
        get(
            "served",
            config.clmc_url,
            "/query",
            db=config.clmc_db,
            q=SERVED_QUERY.format(window=window),
            epoch="ms",
        ),
    )
    topology, registrations, services, alerts, events, kpi, served = parts
    if isinstance(services, dict):  # the orchestrator answers {"services": [...]}
        services = services.get("services", [])
    details = []
    for service in services or []:
        sfc = service.get("sfc") if isinstance(service, dict) else None
        if isinstance(sfc, str):
            details.append(get(f"service {sfc}", config.orchestrator_url, f"/v1/services/{sfc}"))
    service_details = [d for d in await asyncio.gather(*details) if d is not None]
    return {
        "time": time.time(),
        "topology": topology,
        "registrations": (registrations or {}).get("registrations", []),
        "services": service_details,
        "alerts": alerts or [],
        "events": events or [],
        "kpi": _series(kpi),
        "served": _series(served),
        "errors": errors,
    }


def _series(body: Any) -> list[dict[str, Any]]:
    """InfluxDB's JSON result to [{tags, columns, values}] (an empty list when none)."""
    if not isinstance(body, dict):
        return []
    out: list[dict[str, Any]] = []
    for result in body.get("results", []):
        for series in result.get("series", []) or []:
            out.append(
                {
                    "tags": series.get("tags", {}),
                    "columns": series.get("columns", []),
                    "values": series.get("values", []),
                }
            )
    return out
