"""The LOD SF's HTTP API (FastAPI). Every route declares who may call it (docs/media-lod.md).

Players' routes are public and serve the SF's own tenant's models (``$FLAME_TENANT``, the
tenant whose FQDN the SF answers at); ``/v1`` routes take a tenant's credentials and see only
that tenant's models. Errors are JSON ``{"error", "message"}``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from flame.common.access import PUBLIC, require_declared
from flame.common.auth import Principal
from flame.media.appkit import media_app
from flame.media.content.auth import TenantOnly
from flame.media.content.errors import (
    BadRequest,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from flame.media.content.ingest import Limits, guarded_body
from flame.media.lod.choose import ACCEPT_CH, Candidate, choose, parse_hints
from flame.media.lod.service import LodService, check_name
from flame.media.lod.store import Model
from flame.media.messages import etag_matches
from flame.media.ranges import UNSATISFIABLE, ByteRange, content_range, parse_range

__all__ = ["create_app"]

GLB_TYPE = "model/gltf-binary"
_UPLOAD_TYPES = {GLB_TYPE, "application/octet-stream"}
_CHUNK = 256 * 1024


def _tenant(caller: Principal) -> str:
    assert caller.tenant is not None
    return caller.tenant


def _model_view(model: Model, prefix: str) -> dict[str, Any]:
    doc = dict(model.manifest)
    doc["lods"] = [
        {**lv, "url": f"{prefix}/{model.name}.glb?lod={lv['lod']}", "etag": _etag(lv)}
        for lv in model.levels
    ]
    doc["url"] = f"{prefix}/{model.name}.glb"
    doc["hints"] = ACCEPT_CH.split(", ")
    return doc


def _etag(level: dict[str, Any]) -> str:
    return f'"{level["sha256"][:32]}"'


def _pick(request: Request, model: Model, service: LodService) -> tuple[dict[str, Any], str, str]:
    """(level, how it was chosen, reason) for this request."""
    asked = request.query_params.get("lod")
    if asked is not None:
        level = model.level(asked.strip())
        if level is None:
            known = ", ".join(lv["lod"] for lv in model.levels)
            raise NotFound(f"model {model.name!r} has no level {asked[:16]!r}; it has {known}",
                           code="no_such_lod")  # fmt: skip
        return level, "override", "lod parameter"
    hints = parse_hints(request.headers)
    candidates = [Candidate(lv["lod"], lv["triangles"], lv["bytes"]) for lv in model.levels]
    choice = choose(hints, candidates, service.config.policy)
    level = model.level(choice.lod)
    assert level is not None
    return level, "hints", choice.reason


async def _serve(request: Request, model: Model, service: LodService, prefix: str) -> Response:
    level, how, reason = _pick(request, model, service)
    etag = _etag(level)
    size = int(level["bytes"])
    headers = {
        "Content-Type": GLB_TYPE,
        "ETag": etag,
        "Last-Modified": formatdate(float(model.manifest["created_at"]), usegmt=True),
        "Cache-Control": f"public, max-age={service.config.max_age}",
        "Accept-CH": ACCEPT_CH,
        "Accept-Ranges": "bytes",
        "Flame-Lod": level["lod"],
        "Flame-Lod-Triangles": str(level["triangles"]),
        "Flame-Lod-Reason": reason,
        "Content-Location": f"{prefix}/{model.name}.glb?lod={level['lod']}",
    }
    if how == "hints":  # the answer depends on these headers: shared caches must key on them
        headers["Vary"] = ACCEPT_CH
    inm = request.headers.get("if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    raw = request.headers.get("range") if request.method == "GET" else None
    if_range = request.headers.get("if-range")
    if raw is not None and if_range is not None and if_range.strip() != etag:
        raw = None
    selected = parse_range(raw, size)
    if selected is UNSATISFIABLE or (selected is not None and not isinstance(selected, ByteRange)):
        return JSONResponse(
            {"error": "range_not_satisfiable", "message": f"no byte of {raw!r} lies in 0-{size - 1}"},
            status_code=416,
            headers={"Content-Range": content_range(UNSATISFIABLE, size), "Cache-Control": "no-store"},
        )  # fmt: skip
    start, length, status = 0, size, 200
    if isinstance(selected, ByteRange):
        start, length, status = selected.start, selected.length, 206
        headers["Content-Range"] = content_range(selected, size)
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    try:
        handle = await anyio.open_file(model.path(level["lod"]), "rb")
    except OSError:
        raise NotFound(f"model {model.name!r} was just replaced or removed; ask again") from None
    service.served(model.name, level["lod"], how, length)
    return StreamingResponse(_read(handle, start, length), status_code=status, headers=headers)


async def _read(handle: Any, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        await handle.seek(start)
        left = length
        while left > 0:
            chunk = await handle.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    finally:
        await handle.aclose()


async def _body(request: Request, service: LodService) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _UPLOAD_TYPES:
        raise UnsupportedMediaType(
            f"send the model as {GLB_TYPE} (a .glb file), not {ctype or 'no Content-Type'}"
        )
    limit = service.config.max_upload
    raw_length = request.headers.get("content-length")
    if raw_length is not None:
        if not raw_length.strip().isdigit():
            raise BadRequest("Content-Length is not a number", code="invalid_header")
        if int(raw_length) > limit:
            raise TooLarge(f"the model is over {limit} bytes, this SF's limit", code="too_large")
    data = bytearray()
    async for chunk in guarded_body(request.stream(), Limits(), what="the model"):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the model is over {limit} bytes, this SF's limit", code="too_large")
    return bytes(data)


def create_app(service: LodService) -> FastAPI:
    app = media_app(
        service,
        title="FLAME LOD SF",
        description="3D models (glTF) at levels of detail chosen by client hints (MC-11).",
        name="the LOD SF",
        realm="flame-lod",
    )
    store = service.store

    def public_model(name: str) -> Model:
        model = store.get(service.config.tenant or "", name)
        if model is None:
            raise NotFound(f"no model {name!r}")
        return model

    def own_model(caller: Principal, name: str) -> Model:
        model = store.get(_tenant(caller), name)
        if model is None:
            raise NotFound(f"no model {name!r}")
        return model

    # -- public: players ---------------------------------------------------------------------

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sfe": os.environ.get("FLAME_SFE") or None}

    @app.get("/models", dependencies=[PUBLIC])
    async def models() -> Response:
        tenant = service.config.tenant or ""
        doc = {"models": [_model_view(m, "/models") for m in store.of(tenant)]}
        return JSONResponse(doc, headers={"Accept-CH": ACCEPT_CH, "Cache-Control": "no-cache"})

    @app.api_route("/models/{name}.glb", methods=["GET", "HEAD"], dependencies=[PUBLIC])
    async def model_glb(name: str, request: Request) -> Response:
        """The level these client hints call for, or ``?lod=`` (a level of the manifest)."""
        return await _serve(request, public_model(name), service, "/models")

    @app.get("/models/{name}/manifest.json", dependencies=[PUBLIC])
    async def manifest(name: str) -> Response:
        """Every level, like an ABR master playlist: a client may choose for itself."""
        doc = _model_view(public_model(name), "/models")
        return JSONResponse(doc, headers={"Accept-CH": ACCEPT_CH, "Cache-Control": "no-cache"})

    # -- tenants -----------------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models(caller: TenantOnly) -> dict[str, Any]:
        prefix = "/v1/models"
        return {"models": [_model_view(m, prefix) for m in store.of(_tenant(caller))]}

    @app.put("/v1/models/{name}", status_code=201)
    async def put_model(name: str, request: Request, caller: TenantOnly) -> Response:
        """Upload a .glb (``Content-Type: model/gltf-binary``); answers once its levels exist."""
        check_name(name)
        with service.admitted():
            data = await _body(request, service)
            model = await service.put_model(_tenant(caller), name, data)
        return JSONResponse(_model_view(model, "/v1/models"), status_code=201,
                            headers={"Location": f"/v1/models/{name}"})  # fmt: skip

    # Before /v1/models/{name}, which would take "x.glb" for a name.
    @app.api_route("/v1/models/{name}.glb", methods=["GET", "HEAD"])
    async def own_glb(name: str, request: Request, caller: TenantOnly) -> Response:
        return await _serve(request, own_model(caller, name), service, "/v1/models")

    @app.get("/v1/models/{name}")
    async def get_model(name: str, caller: TenantOnly) -> dict[str, Any]:
        return _model_view(own_model(caller, name), "/v1/models")

    @app.delete("/v1/models/{name}", status_code=204)
    async def delete_model(name: str, caller: TenantOnly) -> Response:
        await service.delete(_tenant(caller), name)
        return Response(status_code=204)

    return require_declared(app)
