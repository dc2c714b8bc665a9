"""Issue 11: the CLMC's authorization matrix, every route × every kind of caller.

The CLMC runs as `flame serve clmc` builds it (ClmcService with a token store, alerting and
the delegations), on a loopback port (the alert stream is endless: only a real server answers
its headers before its end). Tenant A is acme (databases `acme`, `acme_*`; x.example), tenant B
globex; the router may only write to `flame`. The expectation below is written out by hand, and
the test fails when the app has a route it does not list.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from eventually import Fatal, eventually
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.clmc.service import ClmcService
from flame.clmc.tenancy import StaticDelegations
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port

from .matrix import CALLERS, PUBLIC_ROW, assert_covers, headers, row

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
}

# InfluxDB answers /ping whoever asks, even with a bad token.
PING_ROW = {caller: 204 for caller in CALLERS}

# (method, route path) -> (the concrete path with its query, a JSON or text body, the row)
CASES: dict[tuple[str, str], tuple[str, Any, dict[str, int]]] = {
    ("GET", "/ping"): ("/ping", None, PING_ROW),
    ("GET", "/health"): ("/health", None, PUBLIC_ROW),
    ("GET", "/openapi.json"): ("/openapi.json", None, PUBLIC_ROW),
    # A tenant writes to its own databases; a router to `flame` only (finding 2).
    ("POST", "/write"): ("/write?db=acme", b"m v=1", row(a=204, b=403, operator=204)),
    ("POST", "/api/v2/write"): (
        "/api/v2/write?bucket=flame",
        b"sr_fqdn,fqdn=x.example requests=1i",
        row(a=403, router=204, operator=204),
    ),
    # Queries: not for routers (finding 2); B cannot read or drop A's database.
    ("GET", "/query"): ("/query?db=acme&q=SELECT+*+FROM+m", None, row(a=200, b=403)),
    ("POST", "/query"): ("/query?q=DROP+DATABASE+acme_scratch", None, row(a=200, b=403)),
    # Alert rules read only what their tenant may query (finding 4): B's on A's database are
    # refused; the operator must name the tenant (400 past the gate).
    ("PUT", "/v1/alerts/{sfc}/{sfci}"): (
        "/v1/alerts/vod/vod-1",
        {"rules": [RULE], "database": "acme"},
        row(a=200, b=403, operator=400),
    ),
    ("DELETE", "/v1/alerts/{sfc}/{sfci}"): ("/v1/alerts/vod/vod-1", None, row(a=200, b=404)),
    ("GET", "/v1/alerts"): ("/v1/alerts", None, row(a=200)),
    ("GET", "/v1/alerts/events"): ("/v1/alerts/events", None, row(a=200)),
    ("GET", "/v1/alerts/stream"): ("/v1/alerts/stream?keepalive_s=0.05", None, row(a=200)),
    # The configuration store (CLMC-3): the orchestrator (operator) records; a tenant reads
    # only its own chains' records (B: as if there were none), a router nothing.
    ("PUT", "/v1/config/{kind}/{name}"): (
        "/v1/config/template/vod",
        {"version": "v1", "tenant": "acme", "content": {"files": {}}},
        row(a=403, operator=201),
    ),
    ("GET", "/v1/config/{kind}/{name}"): ("/v1/config/template/vod", None, row(a=200, b=404)),
    ("GET", "/v1/config/{kind}/{name}/history"): (
        "/v1/config/template/vod/history",
        None,
        row(a=200, b=404),
    ),
}


@pytest.fixture
def clmc(tmp_path: Path) -> Iterator[tuple[ClmcService, str, dict[str, str]]]:
    store = TokenStore(tmp_path / "state" / "tokens.json")
    tokens = {
        "tenant_a": store.issue("acme-bot", Role.TENANT, "acme"),
        "tenant_b": store.issue("globex-bot", Role.TENANT, "globex"),
        "router": store.issue("sr-a", Role.ROUTER),
        "operator": store.issue("ops", Role.OPERATOR),
    }
    alerts = AlertService(None, Notifier("http://127.0.0.1:9/none"), sliding=False)
    service = ClmcService(
        tmp_path / "clmc",
        store,
        fsync=False,
        alerts=alerts,
        delegations=StaticDelegations({"x.example": "acme", "y.example": "globex"}),
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            service.app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise Fatal("the CLMC's server thread ended before it started")
        return bool(server.started)

    eventually(started, every=0.02, what="the CLMC to start")
    try:
        yield service, f"http://127.0.0.1:{port}", tokens
    finally:
        server.should_exit = True
        thread.join(10)


def send(http: httpx.Client, method: str, path: str, body: Any, head: dict[str, str]) -> int:
    if path.startswith("/v1/alerts/stream"):
        with http.stream(method, path, headers=head) as response:
            return response.status_code  # the headers only: the stream never ends
    if isinstance(body, bytes):
        return http.request(method, path, content=body, headers=head).status_code
    if body is None:
        return http.request(method, path, headers=head).status_code
    return http.request(method, path, json=body, headers=head).status_code


def test_every_clmc_route_answers_each_caller_as_its_rule_says(
    clmc: tuple[ClmcService, str, dict[str, str]],
) -> None:
    service, url, tokens = clmc
    assert_covers(service.app, {key: case[2] for key, case in CASES.items()})
    ops = headers("operator", tokens)
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        for db in ("acme", "globex"):
            assert http.post(
                "/query", params={"q": f"CREATE DATABASE {db}"}, headers=ops
            ).is_success
        got: dict[tuple[str, str], dict[str, int]] = {}
        for key, (path, body, _) in CASES.items():
            got[key] = {}
            for caller in CALLERS:
                if key[0] == "DELETE":  # something to delete, set by the orchestrator's token
                    again = {"tenant": "acme", "rules": [RULE], "database": "acme"}
                    assert http.put("/v1/alerts/vod/vod-1", json=again, headers=ops).is_success
                got[key][caller] = send(http, key[0], path, body, headers(caller, tokens))
        assert got == {key: case[2] for key, case in CASES.items()}
        # Errors are InfluxDB's shape on every route, refusals included.
        for caller in ("none", "bad", "router"):
            r = http.get("/query", params={"q": "SHOW DATABASES"}, headers=headers(caller, tokens))
            assert set(r.json()) == {"error"}, r.text
            r = http.get("/v1/alerts", headers=headers(caller, tokens))
            assert set(r.json()) == {"error"}, r.text
