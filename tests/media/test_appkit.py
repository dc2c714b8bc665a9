"""The media SFs' shared app factory (issue 18): lifespan, tenant authentication, JSON errors."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.testclient import TestClient

from flame.common.access import PUBLIC, require_declared
from flame.common.errors import AuthenticationError, FlameError
from flame.media.appkit import media_app
from flame.media.content.auth import Authenticator, TenantOnly, parse_api_keys
from flame.media.content.errors import ContentError, NotFound


class Busy(ContentError):
    code = "busy"
    http_status = 503


class _Service:
    """A service as the SFs have one: an authenticator, started and closed with the app."""

    def __init__(self) -> None:
        self.auth = Authenticator(
            api_keys=parse_api_keys("alice@acme=s3cret-s3cret-s3cret-s3cret", None)
        )
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")


def _client(service: _Service, **options: Any) -> TestClient:
    app = media_app(service, title="t", description="d", name="the test SF", **options)

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/things/{name}")
    async def thing(name: str, caller: TenantOnly) -> dict[str, Any]:
        if name == "busy":
            raise Busy("come back later", headers={"Retry-After": "7"})
        if name == "expired":
            raise AuthenticationError("the session behind this key has ended")
        if name == "boom":
            raise RuntimeError("a bug")
        raise NotFound(f"no thing {name!r} for {caller.tenant}")

    return TestClient(require_declared(app), raise_server_exceptions=False)


def test_the_service_lives_as_long_as_the_app() -> None:
    service = _Service()
    with _client(service) as client:
        assert service.events == ["start"]
        assert client.get("/health").json() == {"status": "ok"}
    assert service.events == ["start", "close"]


def test_v1_needs_a_tenant_key_and_401_names_the_realm() -> None:
    with _client(_Service(), realm="flame-lod") as client:
        r = client.get("/v1/things/x")  # refused by ContentAuth before routing
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="flame-media"'
        assert r.json()["error"] == "authentication_error"
        auth = {"Authorization": "Bearer s3cret-s3cret-s3cret-s3cret"}
        r = client.get("/v1/things/x", headers=auth)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert "acme" in r.json()["message"]
        r = client.get("/v1/things/expired", headers=auth)  # refused by a route: the SF's realm
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="flame-lod"'


def test_errors_keep_their_headers_and_sfs_add_their_own() -> None:
    def extra(request: Request, exc: FlameError) -> dict[str, str]:
        return {"X-Path": request.url.path, "X-Status": str(exc.http_status)}

    auth = {"Authorization": "Bearer s3cret-s3cret-s3cret-s3cret"}
    with _client(_Service(), error_headers=extra) as client:
        r = client.get("/v1/things/busy", headers=auth)
        assert (r.status_code, r.json()["error"]) == (503, "busy")
        assert r.headers["retry-after"] == "7"
        assert (r.headers["x-path"], r.headers["x-status"]) == ("/v1/things/busy", "503")
        # A bug is a JSON 500 naming the SF, never a traceback.
        r = client.get("/v1/things/boom", headers=auth)
        assert r.status_code == 500
        assert r.headers["content-type"].startswith("application/json")
        assert "Traceback" not in r.text
