"""The SFEMC's HTTP surface (SFEMC-3/4), mounted on the orchestrator's API.

* `POST /v1/sfemc/events`: a CLMC alert event (operator token: the CLMC is platform staff);
  answers with the decision and its reason. Duplicates and late events are answered 200 with
  `decision: ignored`: the sender did nothing wrong.
* `GET /v1/sfemc/endpoints[?sfc=]`: every endpoint with desired and current state (operator).
* `GET /v1/images/{digest}`: an image's archive, for the cluster agents of other hosts (`flame
  serve vim`) to pull from (operator: the agents' token). Each archive is re-hashed before it
  is sent: a corrupted one is answered 409, never served.
* `POST /v1/images?digest=&tag=`: push an image (body: the archive); `GET /v1/images` and
  `DELETE /v1/images/{digest}`: a tenant sees and deletes its own images only, the operator all
  (`flame.sfemc.images.push`: size limit 413, digest 409, quota 413/429).

Errors are JSON `{"error", "message", ...}` from `FlameError.as_dict()`; a body that does not
fit the schema is 422 with each field's location; our own bugs are 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from flame.common.access import OperatorOnly, TenantOrOperator
from flame.common.auth import Principal, Role
from flame.sfemc.control import Sfemc
from flame.sfemc.events import AlertEvent
from flame.sfemc.images import ImageError, ImageInfo, ImageNotFound, ImageRepository, check_digest
from flame.sfemc.images.push import PushLimits, receive

__all__ = ["sfemc_router"]

log = logging.getLogger("flame.sfemc.api")


class AlertBody(BaseModel):
    # The CLMC's alert event carries more (value, threshold, message, ...; see
    # docs/clmc-information-model.md); the SFEMC needs these fields and ignores the rest.
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=200)
    alert: str = Field(min_length=1, max_length=200)
    sfc: str = Field(min_length=1, max_length=200)
    sfci: str | None = None
    level: str = Field(default="critical", min_length=1, max_length=40)
    time: float | datetime = Field(description="seconds since the epoch, or ISO 8601")


def _seconds(value: float | datetime) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _owner(caller: Principal) -> str | None:
    """Whose images a caller pushes and sees: a tenant's own; None for the operator (all)."""
    return None if caller.role is Role.OPERATOR else caller.tenant or caller.name


def _shown(info: ImageInfo, owner: str | None) -> dict[str, Any]:
    doc = info.as_dict()
    if owner is not None:  # a tenant never learns which other tenants pushed the same bytes
        doc["owners"] = [owner]
    return doc


def sfemc_router(sfemc: Sfemc, push_limits: PushLimits | None = None) -> APIRouter:
    router = APIRouter()
    limits = push_limits or PushLimits.from_env()
    upload_slots = asyncio.Semaphore(limits.max_concurrent)

    @router.post("/v1/sfemc/events")
    async def alert_event(body: AlertBody, caller: OperatorOnly) -> dict[str, Any]:
        """A CLMC alert notification (SFEMC-3): matched to state-change policies (SFEMC-4)."""
        event = AlertEvent(
            body.id, body.alert, body.sfc, body.sfci, body.level, _seconds(body.time)
        )
        return sfemc.handle_alert(event).to_dict()

    @router.get("/v1/sfemc/endpoints")
    async def endpoints(caller: OperatorOnly, sfc: str | None = None) -> dict[str, Any]:
        return {"endpoints": [e.to_dict() for e in sfemc.endpoints(sfc)]}

    def repository() -> ImageRepository:
        if not isinstance(sfemc.images, ImageRepository):
            raise ImageNotFound("this orchestrator serves no image repository")
        return sfemc.images

    @router.get("/v1/images")
    async def images(caller: TenantOrOperator) -> list[dict[str, Any]]:
        """The SF images this orchestrator's repository holds (a tenant: its own)."""
        repo, owner = repository(), _owner(caller)
        infos = await asyncio.to_thread(repo.list)
        return [_shown(i, owner) for i in infos if owner is None or owner in i.owners]

    @router.post("/v1/images")
    async def push(
        request: Request,
        caller: TenantOrOperator,
        digest: str,
        tag: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's way to declare it
    ) -> JSONResponse:
        """A pushed image (`flame push`): the body is the archive, `digest` what the client
        computed; the caller's own (the operator's: usable by every tenant)."""
        repo, owner = repository(), _owner(caller)
        length = request.headers.get("content-length")
        info, new = await receive(
            repo,
            owner,
            request.stream(),
            digest=digest,
            tags=tag,
            content_length=int(length) if length and length.isdigit() else None,
            limits=limits,
            slots=upload_slots,
        )
        log.info("image %s (%s) pushed by %s", info.digest[:19], info.name, caller.name)
        return JSONResponse(_shown(info, owner), status_code=201 if new else 200)

    @router.delete("/v1/images/{digest}")
    async def delete_image(digest: str, caller: TenantOrOperator) -> dict[str, Any]:
        """Delete an image (a tenant: its own claim on it; refused while endpoints use it)."""
        repo, owner = repository(), _owner(caller)
        check_digest(digest)
        in_use = await asyncio.to_thread(_endpoints_using, sfemc, repo, digest)
        info = await asyncio.to_thread(repo.delete, digest, in_use=in_use, tenant=owner)
        return {"deleted": info.digest, "name": info.name}

    @router.get("/v1/images/{digest}")
    async def image(digest: str, caller: OperatorOnly) -> Response:
        """One image's archive, re-hashed before it is sent (409 if it no longer matches)."""
        repo = repository()
        data = await asyncio.to_thread(repo.read, check_digest(digest))
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Cache-Control": "private, immutable"},
        )

    return router


def _endpoints_using(sfemc: Sfemc, repo: ImageRepository, digest: str) -> list[str]:
    """The endpoints (placed or above) whose image resolves to `digest` for their tenant."""
    using = []
    for record in sfemc.endpoints():
        if record.state.value == "unplaced":
            continue
        try:
            if repo.resolve(record.spec.image, record.spec.tenant) == digest:
                using.append(record.sfe)
        except ImageError:  # not one of ours (a container image, a name since removed)
            continue
    return using
