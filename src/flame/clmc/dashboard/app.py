"""`create_dashboard_app`: the page, and `GET /api/snapshot` assembled from the platform's APIs.

The dashboard holds no privilege of its own: the browser sends its token (taken from the URL
fragment `#token=...`, which never reaches a server log), and each upstream call carries it.
Upstreams are queried concurrently; one that is down leaves its part empty and is named in
`errors`, so the page keeps working with what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

__all__ = ["DashboardConfig", "create_dashboard_app"]

_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

KPI_QUERY = (
    'SELECT mean("response_time") AS "response_time", sum("requests") AS "requests" '
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


def _asset(name: str) -> bytes:
    return (resources.files("flame.clmc.dashboard") / "static" / name).read_bytes()


def create_dashboard_app(config: DashboardConfig) -> FastAPI:
    client: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if "c" in client:
            await client["c"].aclose()

    app = FastAPI(title="FLAME dashboard", docs_url=None, redoc_url=None, lifespan=lifespan)

    def http() -> httpx.AsyncClient:
        if "c" not in client:
            client["c"] = httpx.AsyncClient(timeout=config.timeout_s, trust_env=False)
        return client["c"]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or suffix not in _STATIC_TYPES:
            return JSONResponse({"error": f"no such file {name!r}"}, status_code=404)
        try:
            return Response(_asset(name), media_type=_STATIC_TYPES[suffix])
        except FileNotFoundError:
            return JSONResponse({"error": f"no such file {name!r}"}, status_code=404)

    @app.get("/api/query")
    async def query(request: Request, q: str = "", db: str = "") -> Response:
        """Any InfluxQL, run by the CLMC as the caller (CLMC-17); its answer as it is."""
        auth = request.headers.get("authorization")
        if not auth or config.clmc_url is None:
            status = 401 if not auth else 503
            message = "missing Authorization header" if not auth else "no CLMC configured"
            return JSONResponse({"error": message}, status_code=status)
        try:
            response = await http().get(
                config.clmc_url.rstrip("/") + "/query",
                params={"q": q, "db": db, "epoch": "ms"},
                headers={"Authorization": auth},
            )
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"error": f"the CLMC is unreachable: {type(exc).__name__}"}, status_code=502
            )
        return Response(
            response.content, status_code=response.status_code, media_type="application/json"
        )

    @app.get("/api/snapshot")
    async def snapshot(request: Request) -> Response:
        auth = request.headers.get("authorization")
        if not auth:
            return JSONResponse(
                {
                    "error": "missing Authorization header; open the dashboard URL that 'flame up' "
                    "printed (it carries #token=...)"
                },
                status_code=401,
            )
        return JSONResponse(await gather(http(), config, auth))

    return app


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
            try:
                detail = response.json()
            except ValueError:
                detail = response.text[:200]
            message = (
                detail.get("error") or detail.get("message") if isinstance(detail, dict) else detail
            )
            errors[name] = f"HTTP {response.status_code}: {message}"
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
