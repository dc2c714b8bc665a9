"""Live alert events as server-sent events (`GET /v1/alerts/stream`), over a real uvicorn server:
a tenant's subscriber receives its own chains' events as they are judged, and only those."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pyarrow as pa  # type: ignore[import-untyped]
import uvicorn
from fastapi import FastAPI, Request

from eventually import eventually
from flame.clmc.alerts.api import install_alert_routes
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.common.auth import Principal, Role, TokenStore, parse_bearer
from flame.common.ports import free_port

RULE = {
    "name": "slow",
    "policy": "scale",
    "event_type": "threshold",
    "measurement": "sr_fqdn",
    "field": "response_time",
    "threshold": 100.0,
    "granularity_s": 0.5,
    "aggregation": "mean",
    "comparison": "gt",
    "tags": [],
}


@contextlib.contextmanager
def serving(service: AlertService, tokens: TokenStore) -> Iterator[str]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await service.stop()

    app = FastAPI(lifespan=lifespan)

    def authenticate(request: Request) -> Principal:
        return tokens.authenticate(parse_bearer(request.headers.get("authorization")))

    install_alert_routes(app, service, authenticate)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, what="the alert server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_subscribers_get_their_own_events_live(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    acme = tokens.issue("acme", Role.TENANT, "acme")
    globex = tokens.issue("globex", Role.TENANT, "globex")
    service = AlertService(None, Notifier(None), tick_s=0.05, lateness_s=0.2)
    got: dict[str, list[dict[str, object]]] = {"acme": [], "globex": []}

    def subscribe(name: str, token: str, url: str, ready: threading.Event) -> None:
        with httpx.stream(
            "GET",
            url + "/v1/alerts/stream",
            params={"keepalive_s": "0.2"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    got[name].append(json.loads(line[6:]))
                    return
                # keep-alives every 0.2 s: stop once acme has its event (a misrouted copy would
                # have come with it), or after a deadline that only bounds a broken feature
                if delivered.is_set() or time.monotonic() > deadline:
                    return

    with serving(service, tokens) as url:
        service.put("acme", "vod", "vod-1", [RULE])
        service.put("globex", "tv", "tv-1", [{**RULE, "measurement": "other"}])
        deadline = time.monotonic() + 60
        delivered = threading.Event()
        threads = []
        for name, token in (("acme", acme), ("globex", globex)):
            ready = threading.Event()
            t = threading.Thread(target=subscribe, args=(name, token, url, ready), daemon=True)
            t.start()
            assert ready.wait(60)
            threads.append(t)
        now = time.time_ns()
        rows = pa.table({"time": [now + 100_000_000], "response_time": [500.0]})
        service.observe("flame", "sr_fqdn", rows)  # judged within ~0.8 s on the server's clock
        threads[0].join(60)  # acme: returns on its event
        delivered.set()
        threads[1].join(60)
    assert [(e["alert"], e["level"], e["tenant"]) for e in got["acme"]] == [
        ("slow", "critical", "acme")
    ]
    assert got["globex"] == []  # another tenant's event never reaches it
