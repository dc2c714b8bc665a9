"""What every media SF's HTTP app shares: its lifespan, tenant authentication and JSON errors.

`media_app` builds the FastAPI app of the content, transcoder and LOD SFs: the service starts
with the app and closes after it, ``/v1`` requests are authenticated before routing
(`ContentAuth`), and every refusal is ``{"error", "message", ...}`` JSON with the headers its
status calls for (``WWW-Authenticate`` on a 401). An SF adds headers of its own through
`error_headers` (the content SF's tus routes answer ``Tus-Resumable`` even on errors).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from flame import __version__
from flame.common.errors import FlameError
from flame.common.http_api import install_errors
from flame.media.content.auth import Authenticator, ContentAuth
from flame.media.content.errors import ContentError

__all__ = ["ErrorHeaders", "MediaService", "media_app"]


class MediaService(Protocol):
    """What `media_app` needs of an SF's service object."""

    @property
    def auth(self) -> Authenticator: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


ErrorHeaders = Callable[[Request, FlameError], dict[str, str]]
"""Extra headers for an error answer, given the request and the error."""


def media_app(
    service: MediaService,
    *,
    title: str,
    description: str,
    name: str,
    realm: str = "flame-media",
    error_headers: ErrorHeaders | None = None,
) -> FastAPI:
    """A media SF's app with nothing routed yet; `name` words its internal errors ("the LOD SF")."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title=title, version=__version__, description=description, lifespan=lifespan)
    app.add_middleware(ContentAuth, auth=service.auth)
    install_errors(app, name)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FlameError)
        headers: dict[str, str] = dict(getattr(exc, "headers", {}) or {})
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
        if error_headers is not None:
            headers.update(error_headers(request, exc))
        return JSONResponse(exc.as_dict(), status_code=exc.http_status, headers=headers)

    app.add_exception_handler(FlameError, refused)
    app.add_exception_handler(ContentError, refused)
    return app
