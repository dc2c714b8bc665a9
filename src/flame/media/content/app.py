"""The content SF's HTTP API (FastAPI). Every route declares who may call it; docs/media.md
lists them. Errors are JSON ``{"error", "message", ...}``; tus routes carry ``Tus-Resumable``
on every answer, errors included."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from flame import __version__
from flame.common.access import PUBLIC, require_declared
from flame.common.auth import Principal
from flame.common.errors import FlameError
from flame.media.appkit import media_app
from flame.media.content.auth import TenantOnly
from flame.media.content.catalog import Search, new_id
from flame.media.content.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PreconditionFailed,
    TooLarge,
    UnsupportedMediaType,
)
from flame.media.content.ingest import (
    Limits,
    check_content_type,
    check_sha256,
    guarded_body,
    remove_quietly,
)
from flame.media.content.multipart import parse_form
from flame.media.content.rules import check_rule
from flame.media.content.service import ContentService
from flame.media.content.storage import BlobStore
from flame.media.content.tus import (
    CHECKSUM_ALGORITHMS,
    EXTENSIONS,
    TUS_VERSION,
    Upload,
    description_from,
    parse_checksum,
)
from flame.media.messages import etag_matches, parse_http_date
from flame.media.ranges import UNSATISFIABLE, ByteRange, content_range, parse_range

__all__ = ["create_app"]

_UI = Path(__file__).with_name("ui")
_JSON_LIMIT = 256 * 1024
_ASSET_FIELDS = (
    "id", "name", "owner", "status", "reason", "published", "content_type", "size", "sha256",
    "synopsis", "duration_s", "width", "height", "video_codec", "audio_codec", "container",
    "fps", "bitrate", "vmaf", "reference", "job", "tags", "description", "technical",
    "quality", "created_at", "updated_at",
)  # fmt: skip


def _tenant(caller: Principal) -> str:
    assert caller.tenant is not None
    return caller.tenant


def _asset_view(asset: dict[str, Any]) -> dict[str, Any]:
    view = {k: asset.get(k) for k in _ASSET_FIELDS}
    view["links"] = {
        "self": f"/v1/assets/{asset['id']}",
        "content": f"/v1/assets/{asset['id']}/content",
        "job": f"/v1/jobs/{asset['job']}" if asset.get("job") else None,
        "public": f"/p/{asset['id']}" if asset.get("published") else None,
    }
    return view


def _upload_headers(upload: Upload) -> dict[str, str]:
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(upload.received),
        "Cache-Control": "no-store",
    }
    if upload.state == "done":
        headers["Flame-Asset"] = upload.id
    else:
        headers["Upload-Expires"] = formatdate(upload.expires_at, usegmt=True)
    return headers


def _check_tus(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(
            f"Tus-Resumable {version!r} is not supported; this server speaks {TUS_VERSION}",
            code="unsupported_tus_version",
            headers={"Tus-Version": TUS_VERSION},
        )


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise BadRequest("Content-Length is not a number", code="invalid_header")
    return int(raw)


async def _read_json(request: Request, limits: Limits) -> Any:
    length = _content_length(request)
    if length is not None and length > _JSON_LIMIT:
        raise TooLarge(f"the JSON body is over {_JSON_LIMIT} bytes", code="body_too_large")
    raw = bytearray()
    async for chunk in guarded_body(request.stream(), limits, what="the JSON body"):
        raw += chunk
        if len(raw) > _JSON_LIMIT:
            raise TooLarge(f"the JSON body is over {_JSON_LIMIT} bytes", code="body_too_large")
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}", code="invalid_json") from None


def create_app(service: ContentService) -> FastAPI:
    app = media_app(
        service,
        title="FLAME content SF",
        description="Ingest (tus, multipart), storage, metadata and quality analysis of media.",
        name="the content SF",
        error_headers=_error_headers,
    )
    # Registration order is matching order: the public routes first, as ever.
    _public_routes(app, service)
    _tus_routes(app, service)
    _multipart_route(app, service)
    _asset_routes(app, service)
    _tenant_routes(app, service)
    return require_declared(app)


def _error_headers(request: Request, exc: FlameError) -> dict[str, str]:
    """A busy SF says when to come back; tus routes answer Tus-Resumable even on errors."""
    headers: dict[str, str] = {}
    if exc.http_status == 503:
        headers["Retry-After"] = "1"
    if request.url.path.startswith("/v1/uploads"):
        headers["Tus-Resumable"] = TUS_VERSION
    return headers


def _public_routes(app: FastAPI, service: ContentService) -> None:
    catalog, store = service.catalog, service.store

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sfe": service.config.identity.get("sfe") or None}

    @app.get("/", dependencies=[PUBLIC], include_in_schema=False)
    async def ui_index() -> Response:
        return FileResponse(_UI / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/{name}", dependencies=[PUBLIC], include_in_schema=False)
    async def ui_file(name: str) -> Response:
        if name not in ("app.js", "style.css", "tus.min.js"):
            raise NotFound(f"no file {name}")
        return FileResponse(_UI / name, headers={"Cache-Control": "no-cache"})

    @app.api_route("/p/{asset_id}", methods=["GET", "HEAD"], dependencies=[PUBLIC])
    async def published(asset_id: str, request: Request) -> Response:
        """A published asset, for the service's viewers (through the SRs): no token."""
        asset = await catalog.get_published(asset_id)
        return await _serve(request, asset, store, public=True)


def _tus_routes(app: FastAPI, service: ContentService) -> None:
    limits, uploads = service.config.limits, service.uploads

    @app.options("/v1/uploads")
    async def tus_options(caller: TenantOnly) -> Response:
        return Response(
            status_code=204,
            headers={
                "Tus-Resumable": TUS_VERSION,
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": EXTENSIONS,
                "Tus-Max-Size": str(limits.max_upload),
                "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
            },
        )

    @app.post("/v1/uploads", status_code=201)
    async def tus_create(request: Request, caller: TenantOnly) -> Response:
        _check_tus(request)
        upload = await uploads.create(
            caller,
            length_header=request.headers.get("upload-length"),
            metadata_header=request.headers.get("upload-metadata"),
        )
        headers = _upload_headers(upload)
        headers["Location"] = f"/v1/uploads/{upload.id}"
        length = _content_length(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/offset+octet-stream" and length != 0:  # creation-with-upload
            upload, _ = await uploads.patch(
                _tenant(caller),
                upload.id,
                offset_header="0",
                content_length=length,
                checksum=parse_checksum(request.headers.get("upload-checksum")),
                body=guarded_body(request.stream(), limits, what="the upload"),
            )
            headers.update(_upload_headers(upload))
        return Response(status_code=201, headers=headers)

    @app.head("/v1/uploads/{upload_id}")
    async def tus_head(upload_id: str, request: Request, caller: TenantOnly) -> Response:
        _check_tus(request)
        upload = await uploads.head(_tenant(caller), upload_id)
        headers = _upload_headers(upload)
        headers["Upload-Length"] = str(upload.length)
        if upload.metadata:
            headers["Upload-Metadata"] = upload.metadata
        return Response(status_code=200, headers=headers)

    @app.patch("/v1/uploads/{upload_id}")
    async def tus_patch(upload_id: str, request: Request, caller: TenantOnly) -> Response:
        _check_tus(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/offset+octet-stream":
            raise UnsupportedMediaType(
                "a PATCH body must be Content-Type: application/offset+octet-stream",
                code="unsupported_media_type",
            )
        checksum = parse_checksum(request.headers.get("upload-checksum"))
        upload, _ = await uploads.patch(
            _tenant(caller),
            upload_id,
            offset_header=request.headers.get("upload-offset"),
            content_length=_content_length(request),
            checksum=checksum,
            body=guarded_body(request.stream(), limits, what="the PATCH body"),
        )
        return Response(status_code=204, headers=_upload_headers(upload))

    @app.delete("/v1/uploads/{upload_id}")
    async def tus_delete(upload_id: str, request: Request, caller: TenantOnly) -> Response:
        _check_tus(request)
        await uploads.terminate(_tenant(caller), upload_id)
        return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})


def _multipart_route(app: FastAPI, service: ContentService) -> None:
    limits, catalog, ingest = service.config.limits, service.catalog, service.ingest

    @app.post("/v1/assets", status_code=201)
    async def multipart_upload(request: Request, caller: TenantOnly) -> JSONResponse:
        """A small file as multipart/form-data: field ``file`` and description fields."""
        tenant = _tenant(caller)
        length = _content_length(request)
        if length is not None and length > limits.max_multipart:
            raise TooLarge(
                f"the multipart body is {length} bytes; the limit is {limits.max_multipart} "
                "(use a tus upload)",
                code="multipart_too_large",
                limit=limits.max_multipart,
            )
        await ingest.reserve(tenant, length or 0)
        started = time.monotonic()
        asset_id = new_id()
        dest = ingest.staged(asset_id)
        try:
            form = await parse_form(
                request.headers.get("content-type", ""),
                guarded_body(request.stream(), limits, what="the form"),
                dest,
                limits.max_multipart,
            )
            meta: dict[str, str | None] = {k: v for k, v in form.fields.items()}
            if form.filename and not (meta.get("name") or meta.get("filename")):
                meta["filename"] = form.filename
            description = await catalog.validate(tenant, description_from(meta))
            ctype = check_content_type(form.file_type or meta.get("type"), description["name"])
            async with ingest.quota_lock:
                await ingest.reserve(tenant, form.size)
                asset = await ingest.finish(
                    asset_id=asset_id,
                    tenant=tenant,
                    owner=caller.name,
                    path=dest,
                    description=description,
                    content_type=ctype,
                    sha256=form.sha256,
                    expected_sha256=check_sha256(meta.get("sha256")),
                    method="multipart",
                    started=started,
                )
        finally:
            remove_quietly(dest)
        return JSONResponse(
            _asset_view(asset), status_code=201, headers={"Location": f"/v1/assets/{asset_id}"}
        )


def _asset_routes(app: FastAPI, service: ContentService) -> None:
    limits, catalog, worker, store = (
        service.config.limits, service.catalog, service.worker, service.store,
    )  # fmt: skip

    @app.get("/v1/assets")
    async def search(
        caller: TenantOnly,
        q: str | None = None,
        tag: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's way to declare a list
        min_duration: float | None = None,
        max_duration: float | None = None,
        codec: str | None = None,
        resolution: str | None = None,
        min_height: int | None = None,
        max_height: int | None = None,
        min_vmaf: float | None = None,
        status: str | None = None,
        published: bool | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: str = "-created",
    ) -> dict[str, Any]:
        found = await catalog.search(
            _tenant(caller),
            Search(
                q=q, tags=tag, min_duration=min_duration, max_duration=max_duration,
                codec=codec, resolution=resolution, min_height=min_height,
                max_height=max_height, min_vmaf=min_vmaf, status=status, published=published,
                limit=limit, offset=offset, sort=sort,
            ),
        )  # fmt: skip
        found["assets"] = [_asset_view(a) for a in found["assets"]]
        return found

    @app.get("/v1/assets/{asset_id}")
    async def asset(asset_id: str, caller: TenantOnly) -> dict[str, Any]:
        return _asset_view(await catalog.get(_tenant(caller), asset_id))

    @app.patch("/v1/assets/{asset_id}")
    async def describe(asset_id: str, request: Request, caller: TenantOnly) -> dict[str, Any]:
        """Merge the body into the description (a null removes a field), then validate."""
        tenant = _tenant(caller)
        patch = await _read_json(request, limits)
        if not isinstance(patch, dict):
            raise BadRequest("send a JSON object: the description fields to change")
        current = dict((await catalog.get(tenant, asset_id))["description"])
        for key, value in patch.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        description = await catalog.validate(tenant, current)
        return _asset_view(await catalog.update_description(tenant, asset_id, description))

    @app.delete("/v1/assets/{asset_id}")
    async def delete_asset(asset_id: str, caller: TenantOnly) -> dict[str, Any]:
        gone = await catalog.delete(_tenant(caller), asset_id)
        await store.delete(gone["storage_key"])
        return {"deleted": asset_id}

    @app.api_route("/v1/assets/{asset_id}/content", methods=["GET", "HEAD"])
    async def content(asset_id: str, request: Request, caller: TenantOnly) -> Response:
        return await _serve(
            request, await catalog.get(_tenant(caller), asset_id), store, public=False
        )

    @app.post("/v1/assets/{asset_id}/analyse", status_code=202)
    async def analyse(asset_id: str, request: Request, caller: TenantOnly) -> dict[str, Any]:
        body = await _read_json(request, limits) or {}
        if not isinstance(body, dict) or set(body) - {"reference"}:
            raise BadRequest('send {} or {"reference": "<asset id>"}')
        if service.config.analysis_mode == "off":
            raise Conflict("analysis is off in this SF (MEDIA_ANALYSIS=off)", code="analysis_off")
        return await worker.submit(_tenant(caller), asset_id, body.get("reference"))

    @app.post("/v1/assets/{asset_id}/publish")
    async def publish(asset_id: str, caller: TenantOnly) -> dict[str, Any]:
        tenant = _tenant(caller)
        found = await catalog.get(tenant, asset_id)
        if found["status"] in ("rejected", "analysis_failed"):
            raise Conflict(
                f"asset {asset_id} is {found['status']}: {found.get('reason')}",
                code="not_publishable",
            )
        await catalog.set_published(tenant, asset_id, True)
        return _asset_view(await catalog.get(tenant, asset_id))

    @app.delete("/v1/assets/{asset_id}/publish")
    async def unpublish(asset_id: str, caller: TenantOnly) -> dict[str, Any]:
        tenant = _tenant(caller)
        await catalog.set_published(tenant, asset_id, False)
        return _asset_view(await catalog.get(tenant, asset_id))


def _tenant_routes(app: FastAPI, service: ContentService) -> None:
    limits, catalog, worker, store = (
        service.config.limits, service.catalog, service.worker, service.store,
    )  # fmt: skip

    @app.get("/v1/schema")
    async def get_schema(caller: TenantOnly) -> dict[str, Any]:
        from flame.media.content.catalog import DEFAULT_SCHEMA  # noqa: PLC0415

        return {
            "default": DEFAULT_SCHEMA,
            "provider": await catalog.provider_schema(_tenant(caller)),
        }

    @app.put("/v1/schema")
    async def put_schema(request: Request, caller: TenantOnly) -> dict[str, Any]:
        schema = await _read_json(request, limits)
        await catalog.set_provider_schema(_tenant(caller), schema)
        return {"provider": schema}

    @app.delete("/v1/schema")
    async def delete_schema(caller: TenantOnly) -> dict[str, Any]:
        await catalog.delete_provider_schema(_tenant(caller))
        return {"provider": None}

    @app.get("/v1/rule")
    async def get_rule(caller: TenantOnly) -> dict[str, Any]:
        return {"rule": await worker.rule(_tenant(caller))}

    @app.put("/v1/rule")
    async def put_rule(request: Request, caller: TenantOnly) -> dict[str, Any]:
        rule = check_rule(await _read_json(request, limits))
        await catalog.set_setting(_tenant(caller), "rule", rule)
        return {"rule": rule}

    @app.get("/v1/jobs")
    async def jobs(
        caller: TenantOnly, state: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        return {"jobs": await worker.list(_tenant(caller), state, limit)}

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str, caller: TenantOnly) -> dict[str, Any]:
        return await worker.get(_tenant(caller), job_id)

    @app.get("/v1/usage")
    async def usage(caller: TenantOnly) -> dict[str, Any]:
        tenant = _tenant(caller)
        return {**await catalog.usage(tenant), "quota": limits.quota_of(tenant),
                "max_upload": limits.max_upload, "max_multipart": limits.max_multipart}  # fmt: skip

    @app.get("/v1/status")
    async def status(caller: TenantOnly) -> dict[str, Any]:
        return {
            "version": __version__,
            "storage": store.kind,
            "database": service.db.kind,
            "analysis": service.config.analysis_mode,
            "ingested": service.ingested,
            "jobs": await worker.counts(),
            "clmc": service.reporter.stats(),
            "uptime_s": round(time.monotonic() - service.started, 3),
        }


async def _serve(
    request: Request, asset: dict[str, Any], store: BlobStore, *, public: bool
) -> Response:
    """An asset's bytes with validators and ranges (RFC 9110); `public` for published ones."""
    size = int(asset["size"])
    etag = f'"{asset["sha256"]}"'
    modified = float(asset["created_at"])
    name = str(asset["name"])
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": str(asset["content_type"]),
        "Cache-Control": "public, max-age=3600" if public else "private, no-cache",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name, safe='')}",
    }
    inm = request.headers.get("if-none-match")
    if inm is not None:
        if etag_matches(inm, etag):
            return Response(status_code=304, headers=headers)
    else:
        since = parse_http_date(request.headers.get("if-modified-since"))
        if since is not None and int(modified) <= since:
            return Response(status_code=304, headers=headers)
    raw = request.headers.get("range") if request.method == "GET" else None
    if raw is not None:
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            raw = None
    selected = parse_range(raw, size)
    if selected is UNSATISFIABLE or (
        raw is not None and selected is not None and not isinstance(selected, ByteRange)
    ):
        return JSONResponse(
            {
                "error": "range_not_satisfiable",
                "message": f"no byte of {raw!r} lies in 0-{size - 1}",
            },
            status_code=416,
            headers={"Content-Range": content_range(UNSATISFIABLE, size)},
        )
    status, start, end = 200, 0, size - 1
    if isinstance(selected, ByteRange):
        status, start, end = 206, selected.start, selected.end
        headers["Content-Range"] = content_range(selected, size)
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers)
    return StreamingResponse(store.read(str(asset["storage_key"]), start, end),
                             status_code=status, headers=headers)  # fmt: skip
