"""The transcoder SF's HTTP API (FastAPI). Every route declares who may call it; the job API
and source uploads are for the SF's tenants, the outputs (``/o/<job>/...``), the players and
the player page are public: a job id is 128 random bits, so an output URL is a capability
link, like an unlisted video. docs/media-transcoding.md describes the routes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from flame import __version__
from flame.common.access import PUBLIC, require_declared
from flame.common.auth import Principal
from flame.media.appkit import media_app
from flame.media.content.auth import TenantOnly
from flame.media.content.errors import BadRequest, NotFound, TooLarge
from flame.media.content.ingest import Limits, guarded_body
from flame.media.transcode.ladder import parse_job
from flame.media.transcode.output import PLAYERS, player_page, serve_file
from flame.media.transcode.service import TranscodeService

__all__ = ["create_app"]

_JSON_LIMIT = 64 * 1024
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PLAYER_FILES = ("hls.min.js", "dash.all.min.js")


def _tenant(caller: Principal) -> str:
    assert caller.tenant is not None
    return caller.tenant


async def _read_json(request: Request, limits: Limits) -> Any:
    raw = bytearray()
    async for chunk in guarded_body(request.stream(), limits, what="the JSON body"):
        raw += chunk
        if len(raw) > _JSON_LIMIT:
            raise TooLarge(f"the JSON body is over {_JSON_LIMIT} bytes", code="body_too_large")
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}", code="invalid_json") from None


def create_app(service: TranscodeService) -> FastAPI:
    app = media_app(
        service,
        title="FLAME transcoder SF",
        description="Ladders in H.264/HEVC/AV1 packaged once into CMAF for HLS and DASH.",
        name="the transcoder SF",
    )
    transcoder = service.transcoder
    settings = service.config.settings
    body_limits = Limits()

    # -- public ------------------------------------------------------------------------------

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sfe": service.config.identity.get("sfe") or None}

    @app.get("/players/{name}", dependencies=[PUBLIC], include_in_schema=False)
    async def players(name: str, request: Request) -> Response:
        if name not in _PLAYER_FILES:
            raise NotFound(f"no player {name[:40]!r}")
        return await serve_file(request, PLAYERS, name)

    @app.get("/play/{job_id}", dependencies=[PUBLIC], include_in_schema=False)
    async def play(job_id: str, player: str = "hls") -> Response:
        if not _JOB_ID.fullmatch(job_id) or transcoder.output_dir(job_id) is None:
            raise NotFound(f"no finished job {job_id[:40]!r}")
        if player not in ("hls", "dash"):
            raise BadRequest("player is hls or dash", code="invalid_player")
        return HTMLResponse(player_page(job_id, player), headers={"Cache-Control": "no-cache"})

    @app.api_route("/o/{job_id}/{name}", methods=["GET", "HEAD"], dependencies=[PUBLIC])
    async def output(job_id: str, name: str, request: Request) -> Response:
        """A finished job's manifests and segments, for players (no token: a capability URL)."""
        directory = transcoder.output_dir(job_id) if _JOB_ID.fullmatch(job_id) else None
        if directory is None:
            raise NotFound(f"no finished job {job_id[:40]!r}")
        return await serve_file(request, directory, name)

    # -- jobs --------------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request, caller: TenantOnly) -> JSONResponse:
        spec = parse_job(await _read_json(request, body_limits), service.config.limits)
        job = transcoder.submit(_tenant(caller), caller.name, spec)
        return JSONResponse(job.view(), status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})  # fmt: skip

    @app.get("/v1/jobs")
    async def jobs(caller: TenantOnly, state: str | None = None, limit: int = 100) -> Any:
        return {"jobs": [j.view() for j in transcoder.list_jobs(_tenant(caller), state, limit)]}

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str, caller: TenantOnly) -> dict[str, Any]:
        return transcoder.get(_tenant(caller), job_id).view()

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str, caller: TenantOnly) -> dict[str, Any]:
        return transcoder.cancel(_tenant(caller), job_id).view()

    @app.delete("/v1/jobs/{job_id}")
    async def delete(job_id: str, caller: TenantOnly) -> dict[str, Any]:
        await transcoder.delete(_tenant(caller), job_id)
        return {"deleted": job_id}

    _source_routes(app, service, body_limits)

    @app.get("/v1/status")
    async def status(caller: TenantOnly) -> dict[str, Any]:
        return {
            "version": __version__,
            "jobs": transcoder.stats(),
            "workers": settings.workers,
            "threads": settings.threads,
            "max_queue": settings.max_queue,
            "clmc": service.reporter.stats(),
            "uptime_s": round(time.monotonic() - service.started, 3),
        }

    return require_declared(app)


def _source_routes(app: FastAPI, service: TranscodeService, body_limits: Limits) -> None:
    """Sources uploaded to the SF itself (for jobs whose source is not at a URL)."""
    transcoder, settings = service.transcoder, service.config.settings

    def _source_path(tenant: str, name: str) -> Path:
        if not _SOURCE.fullmatch(name):
            raise BadRequest("a source name is [A-Za-z0-9._-], 128 at most", code="invalid_name")
        return transcoder.sources_dir / tenant / name

    @app.put("/v1/sources/{name}", status_code=201)
    async def put_source(name: str, request: Request, caller: TenantOnly) -> dict[str, Any]:
        """A source file as the raw body (then ``{"source": {"path": name}}`` in a job)."""
        path = _source_path(_tenant(caller), name)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_source:
            raise TooLarge(f"a source is at most {settings.max_source} bytes",
                           code="source_too_large", limit=settings.max_source)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{name}.{os.getpid()}.{time.monotonic_ns()}.part")
        got = 0
        try:
            with partial.open("wb") as fh:
                async for chunk in guarded_body(request.stream(), body_limits, what="the source"):
                    got += len(chunk)
                    if got > settings.max_source:
                        raise TooLarge(f"a source is at most {settings.max_source} bytes",
                                       code="source_too_large", limit=settings.max_source)  # fmt: skip
                    fh.write(chunk)
            partial.replace(path)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        return {"name": name, "size": got}

    @app.get("/v1/sources")
    async def sources(caller: TenantOnly) -> dict[str, Any]:
        d = transcoder.sources_dir / _tenant(caller)
        found = sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []
        return {"sources": [{"name": p.name, "size": p.stat().st_size} for p in found]}

    @app.delete("/v1/sources/{name}")
    async def delete_source(name: str, caller: TenantOnly) -> dict[str, Any]:
        path = _source_path(_tenant(caller), name)
        if not path.is_file():
            raise NotFound(f"no source {name}")
        path.unlink()
        return {"deleted": name}
