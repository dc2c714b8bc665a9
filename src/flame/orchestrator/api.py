"""The orchestrator's HTTP API (ORCH-1/2/6-9), hosting the SFEMC's routes in the same process.

    POST   /v1/services               submit a template (JSON or multipart): plan, then apply
    POST   /v1/services/{sfc}/plan    the plan only: what would be added, changed, removed
    GET    /v1/services               the caller's chains
    GET    /v1/services/{sfc}         per-endpoint state and history
    DELETE /v1/services/{sfc}         undeploy
    GET    /v1/endpoints/{sfe}/logs   an endpoint's output
    GET    /v1/whoami                 the caller's name, role and tenant
    POST   /v1/sfemc/events           CLMC alert events (SFEMC-3/4)

Bodies: JSON `{"template": "<yaml>", "name": "service.yaml", "files": {"alerts.yaml": "..."}}`
or multipart/form-data with one or more files (their file names are used in diagnostics). The
operator adds `?tenant=NAME`. Invalid templates are 422 with every TOSCA diagnostic (file, line,
column); a plan contradicting what is deployed is 409; nothing is changed by either.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from flame import __version__
from flame.common.access import PUBLIC, AnyRole, TenantOrOperator, require_declared
from flame.common.auth import TokenStore
from flame.common.errors import UserError
from flame.common.http_api import BearerAuth, install_errors
from flame.orchestrator.service import Orchestrator
from flame.sfemc.api import sfemc_router

__all__ = ["create_app", "read_files"]


_MAX_BYTES = 4 * 1024 * 1024


async def read_files(request: Request) -> dict[str, str]:
    """File name -> template text from a JSON or multipart body; UserError naming the problem."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        files: dict[str, str] = {}
        async with request.form(max_part_size=_MAX_BYTES) as form:  # closes the spooled files
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    name = value.filename or key
                else:
                    data, name = str(value).encode(), f"{key}.yaml"
                files[name] = _text(data, name)
        return files
    if ctype not in ("application/json", ""):
        raise UserError(
            f"unsupported content type '{ctype}': send application/json "
            "{'template': '<yaml>'} or multipart/form-data files"
        )
    raw = await request.body()
    if len(raw) > _MAX_BYTES:
        raise UserError(f"request body over {_MAX_BYTES} bytes; send a smaller template")
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("template"), str):
        raise UserError(
            "JSON body must be an object with 'template': the YAML text "
            "(and optionally 'name' and 'files': {name: text})"
        )
    extra = body.get("files") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise UserError("'files' must map file names to YAML text")
    unknown = set(body) - {"template", "name", "files"}
    if unknown:
        raise UserError(f"unknown keys {sorted(unknown)}: allowed are template, name, files")
    name = body.get("name") or "template.yaml"
    return {str(name): body["template"], **{str(k): v for k, v in extra.items()}}


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"file '{name}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def create_app(
    orchestrator: Orchestrator,
    tokens: TokenStore,
    *,
    manage_sfemc: bool = True,
    on_close: Callable[[], Awaitable[None]] | None = None,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API; its lifespan starts and stops the SFEMC, then awaits `on_close` (e.g. closing
    the VIMs on the server's own event loop)."""
    sfemc = orchestrator.sfemc

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_sfemc:
            await sfemc.start()
        if on_start is not None:
            await on_start()
        try:
            yield
        finally:
            orchestrator.close()
            if manage_sfemc:
                await sfemc.stop()
            if on_close is not None:
                await on_close()

    app = FastAPI(
        title="FLAME orchestrator + SFEMC",
        version=__version__,
        description="Deploy FLAME-TOSCA services; endpoint lifecycle and policies (ORCH, SFEMC).",
        lifespan=lifespan,
    )
    app.add_middleware(BearerAuth, tokens=tokens)
    install_errors(app, "the orchestrator")
    app.include_router(sfemc_router(sfemc))

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "queue": len(sfemc.reconciler.queue)}

    @app.get("/v1/whoami")
    async def whoami(caller: AnyRole) -> dict[str, Any]:
        """Who the token belongs to (the dashboard checks a token with it)."""
        return {"name": caller.name, "role": caller.role.value, "tenant": caller.tenant}

    @app.post("/v1/services", status_code=202)
    async def submit(
        request: Request, caller: TenantOrOperator, tenant: str | None = None
    ) -> JSONResponse:
        plan, changed = await orchestrator.apply(caller, await read_files(request), tenant=tenant)
        return JSONResponse(
            {"plan": plan.to_dict(), "changed": changed}, status_code=202 if changed else 200
        )

    @app.post("/v1/services/{sfc}/plan")
    async def plan(
        sfc: str, request: Request, caller: TenantOrOperator, tenant: str | None = None
    ) -> dict[str, Any]:
        result = await orchestrator.plan(caller, await read_files(request), tenant=tenant, sfc=sfc)
        return result.to_dict()

    @app.get("/v1/services")
    async def services(caller: TenantOrOperator) -> dict[str, Any]:
        return {"services": orchestrator.services(caller)}

    @app.get("/v1/services/{sfc}")
    async def status(sfc: str, caller: TenantOrOperator, history: bool = True) -> dict[str, Any]:
        return await orchestrator.status(caller, sfc, history=history)

    @app.delete("/v1/services/{sfc}", status_code=202)
    async def delete(sfc: str, caller: TenantOrOperator) -> dict[str, Any]:
        return {"sfc": sfc, "removing": orchestrator.delete(caller, sfc)}

    @app.get("/v1/endpoints/{sfe}/logs")
    async def logs(sfe: str, caller: TenantOrOperator, tail: int = 100) -> dict[str, Any]:
        return {"sfe": sfe, "lines": await orchestrator.logs(caller, sfe, max(1, min(tail, 10000)))}

    return require_declared(app)
