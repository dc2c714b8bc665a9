"""The SFEMC's HTTP surface (SFEMC-3/4), mounted on the orchestrator's API.

* `POST /v1/sfemc/events`: a CLMC alert event (operator token: the CLMC is platform staff);
  answers with the decision and its reason. Duplicates and late events are answered 200 with
  `decision: ignored`: the sender did nothing wrong.
* `GET /v1/sfemc/endpoints[?sfc=]`: every endpoint with desired and current state (operator).
* `GET /v1/images`, `GET /v1/images/{digest}`: the SF image repository, for the cluster agents
  of other hosts (`flame serve vim`) to pull from (operator: the agents' token). Each archive is
  re-hashed before it is sent: a corrupted one is answered 409, never served.

Errors are JSON `{"error", "message", ...}` from `FlameError.as_dict()`; a body that does not
fit the schema is 422 with each field's location; our own bugs are 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from flame.common.access import OperatorOnly
from flame.sfemc.control import Sfemc
from flame.sfemc.events import AlertEvent
from flame.sfemc.images import ImageNotFound, ImageRepository, check_digest

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


def sfemc_router(sfemc: Sfemc) -> APIRouter:
    router = APIRouter()

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
    async def images(caller: OperatorOnly) -> list[dict[str, Any]]:
        """The SF images this orchestrator's repository holds."""
        repo = repository()
        return [i.as_dict() for i in await asyncio.to_thread(repo.list)]

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
