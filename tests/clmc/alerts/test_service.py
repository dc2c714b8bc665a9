"""Alerting as a service: rules over HTTP (tenant-scoped), persisted across restarts, events
delivered to the SFEMC webhook (with the platform token) and to third-party webhooks (without),
retried on failure; a refusing handler is not retried."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from fastapi import FastAPI, Request

from flame.clmc.alerts.api import install_alert_routes
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.outbound import OutboundPolicy
from flame.clmc.alerts.service import AlertService
from flame.common.auth import Principal, Role, TokenStore, parse_bearer

S = 1_000_000_000

RULE = {
    "name": "slow",
    "policy": "scale",
    "event_type": "threshold",
    "measurement": "sr_fqdn",
    "field": "response_time",
    "threshold": 100.0,
    "granularity_s": 1.0,
    "aggregation": "mean",
    "comparison": "gt",
    "tags": [["fqdn", "vod.example"]],
    "notify_sfemc": True,
    "webhooks": [],
}


class Receiver:
    """A real HTTP server on loopback that records what it is sent and answers `status`."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = {
            k.lower(): v
            for k, _, v in (line.partition(": ") for line in head.split("\r\n")[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append((headers, json.loads(body)))
        status = self.statuses.pop(0) if self.statuses else 204
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tokens = TokenStore(tmp / "tokens.json")
        self.operator = self.tokens.issue("ops", Role.OPERATOR)
        self.acme = self.tokens.issue("acme", Role.TENANT, "acme")
        self.globex = self.tokens.issue("globex", Role.TENANT, "globex")


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def app_for(service: AlertService, tokens: TokenStore) -> FastAPI:
    app = FastAPI()

    def authenticate(request: Request) -> Principal:
        try:
            return tokens.authenticate(parse_bearer(request.headers.get("authorization")))
        except Exception as exc:
            raise Denied(401, str(exc)) from None

    install_alert_routes(app, service, authenticate)
    return app


def batch(t: int, value: float) -> pa.Table:
    return pa.table(
        {
            "time": pa.array([t], pa.int64()),
            "fqdn": pa.array(["vod.example"]),
            "response_time": pa.array([value]),
        }
    )


@pytest.mark.asyncio
async def test_rules_over_http_fire_to_the_sfemc_and_webhooks(tmp_path: Path) -> None:
    env = Env(tmp_path)
    receiver, third_party = Receiver([]), Receiver([])
    sfemc_url, hook = await receiver.start(), await third_party.start()
    # The third party listens on loopback, which the outbound policy refuses unless allowed.
    loopback = OutboundPolicy.build(allow=["127.0.0.1"])
    service = AlertService(
        tmp_path / "rules.json",
        Notifier(sfemc_url, token=env.operator, outbound=loopback),
        sliding=False,
    )
    app = app_for(service, env.tokens)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://clmc"
    ) as c:
        as_acme = {"Authorization": f"Bearer {env.acme}"}
        rule = {**RULE, "webhooks": [hook]}
        r = await c.put("/v1/alerts/vod/vod-1", json={"rules": [rule]}, headers=as_acme)
        assert r.status_code == 200, r.text
        assert r.json() == {"tenant": "acme", "sfc": "vod", "sfci": "vod-1", "rules": ["slow"]}
        # Another tenant neither sees nor deletes them; no token is a 401 JSON.
        as_globex = {"Authorization": f"Bearer {env.globex}"}
        assert (await c.get("/v1/alerts", headers=as_globex)).json() == []
        assert (await c.delete("/v1/alerts/vod/vod-1", headers=as_globex)).status_code == 404
        assert (await c.get("/v1/alerts")).status_code == 401
        spoof = await c.put(
            "/v1/alerts/x/y", json={"tenant": "acme", "rules": [RULE]}, headers=as_globex
        )
        assert spoof.status_code == 403
        bad = await c.put("/v1/alerts/x/y", json={"rules": [{"name": "n"}]}, headers=as_acme)
        assert bad.status_code == 400
        assert "malformed alert rule" in bad.json()["error"]

        now = service.engine.clock()
        window = now // S * S
        service.engine.observe("flame", "sr_fqdn", batch(window + 1, 500.0))
        (event,) = service.evaluate(window + 3 * S)
        for _ in range(200):
            if receiver.received and third_party.received:
                break
            await asyncio.sleep(0.02)
        # Third-party webhooks get Kapacitor's alert JSON.
        kapacitor = third_party.received[0][1]
        assert kapacitor["id"] == "vod/vod-1/slow"
        assert kapacitor["level"] == "CRITICAL"
        assert kapacitor["previousLevel"] == "OK"
        assert kapacitor["message"] == event.message
        assert kapacitor["duration"] >= 0
        (series,) = kapacitor["data"]["series"]
        assert series["name"] == "sr_fqdn"
        assert series["tags"] == {"fqdn": "vod.example"}
        assert series["columns"] == ["time", "mean"]
        assert series["values"][0][1] == 500.0
        assert series["values"][0][0].endswith("Z")
        assert "authorization" not in third_party.received[0][0]
        headers, body = receiver.received[0]
        assert headers["authorization"] == f"Bearer {env.operator}"
        assert body["id"] == event.id
        assert body["level"] == "critical"
        assert body["alert"] == "slow"
        assert (body["sfc"], body["sfci"], body["tenant"]) == ("vod", "vod-1", "acme")
        listed = (await c.get("/v1/alerts", headers=as_acme)).json()
        assert [(x["name"], x["level"]) for x in listed] == [("slow", "critical")]
        events = (await c.get("/v1/alerts/events", headers=as_acme)).json()
        assert [e["id"] for e in events] == [event.id]
        assert (await c.get("/v1/alerts/events", headers=as_globex)).json() == []
    await service.stop()
    await receiver.close()
    await third_party.close()

    # A restarted CLMC has the rules again (their level starts over).
    again = AlertService(tmp_path / "rules.json", Notifier(None))
    assert [(k.tenant, k.name) for k, _, _ in again.engine.rules()] == [("acme", "slow")]


@pytest.mark.asyncio
async def test_deliveries_retry_server_errors_but_not_refusals(tmp_path: Path) -> None:
    flaky = Receiver([503, 503, 200])
    refusing = Receiver([422])
    flaky_url, refusing_url = await flaky.start(), await refusing.start()
    notifier = Notifier(
        sfemc_url=flaky_url, token="secret", outbound=OutboundPolicy.build(allow=["127.0.0.1"])
    )
    service = AlertService(None, notifier, sliding=False)
    service.put("acme", "vod", "vod-1", [{**RULE, "webhooks": [refusing_url]}])
    window = service.engine.clock() // S * S
    service.engine.observe("flame", "sr_fqdn", batch(window + 1, 500.0))
    service.evaluate(window + 3 * S)
    await notifier.close()
    assert len(flaky.received) == 3  # two 503s, then delivered
    assert notifier.delivered == 1
    assert len(refusing.received) == 1  # a 422 is final
    assert notifier.failed == 1
    assert "authorization" not in refusing.received[0][0]  # the token stays with the SFEMC
    await flaky.close()
    await refusing.close()
