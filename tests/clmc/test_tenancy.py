"""flame.clmc.tenancy: delegations from the PCE, polled, failing closed, reported in /health."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from flame.clmc.tenancy import DelegationMap, HttpDelegations, StaticDelegations, access_for
from flame.common.auth import Principal, Role, TokenStore
from sfr.test_api import LINE, Env, running


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """A PCE's environment (as tests/sfr/test_api.py's)."""
    topology_path = tmp_path / "line.yaml"
    topology_path.write_text(LINE, encoding="utf-8")
    tokens = TokenStore(tmp_path / "state" / "tokens.json")
    return Env(
        tmp=tmp_path,
        topology_path=topology_path,
        db=tmp_path / "pce.sqlite3",
        tokens=tokens,
        operator=tokens.issue("ops", Role.OPERATOR),
        acme=tokens.issue("acme-bot", Role.TENANT, "acme"),
        globex=tokens.issue("globex-bot", Role.TENANT, "globex"),
    )


class FakePce:
    """Answers GET /v1/delegations from `self.items`, or with `self.status`."""

    def __init__(self) -> None:
        self.items = [{"name": "x.example", "tenant": "acme"}]
        self.status = 200
        self.seen_auth: list[str | None] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen_auth.append(request.headers.get("authorization"))
        assert request.url.path == "/v1/delegations"
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "standby"})
        return httpx.Response(200, json={"delegations": self.items})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.asyncio
async def test_the_delegations_come_from_the_pce_and_fail_closed_when_it_is_silent() -> None:
    pce, clock = FakePce(), Clock()
    source = HttpDelegations(
        ["http://pce:7070/"],
        "flm_ops",
        max_stale_s=30,
        transport=httpx.MockTransport(pce.handler),
        clock=clock,
    )
    assert source.current() is None  # before the first answer: nothing
    assert source.health()["state"] == "unknown"
    assert source.names_of("acme") == frozenset()
    await source.start()
    try:
        assert await source.refresh()
        assert pce.seen_auth[-1] == "Bearer flm_ops"
        assert source.names_of("acme") == {"x.example"}
        health = source.health()
        assert health["state"] == "ok"
        assert health["delegations"] == 1
        assert health["refresh_s"] == 1.0
        # The PCE away: the last answer holds for max_stale_s, then nothing.
        pce.status = 503
        clock.t += 29
        assert not await source.refresh()
        assert source.names_of("acme") == {"x.example"}
        assert "HTTP 503" in source.health()["error"]
        clock.t += 2
        assert source.current() is None
        assert source.names_of("acme") == frozenset()
        assert source.health()["state"] == "stale"
        # Back: a new delegation counts at once, a withdrawn one is gone.
        pce.status = 200
        pce.items = [{"name": "y.example", "tenant": "acme"}]
        assert await source.refresh()
        assert source.names_of("acme") == {"y.example"}
        assert source.health()["error"] is None
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_a_standby_is_skipped_and_polling_runs_by_itself() -> None:
    standby, active = FakePce(), FakePce()
    standby.status = 503

    def route(request: httpx.Request) -> httpx.Response:
        return (standby if request.url.host == "standby" else active).handler(request)

    source = HttpDelegations(
        ["http://standby", "http://active"],
        None,
        period_s=0.01,
        transport=httpx.MockTransport(route),
    )
    await source.start()
    try:
        for _ in range(500):
            if source.current() is not None:
                break
            await asyncio.sleep(0.01)
        assert source.names_of("acme") == {"x.example"}
        assert active.seen_auth[-1] is None
        active.items = []
        for _ in range(500):
            if not source.names_of("acme"):
                break
            await asyncio.sleep(0.01)
        assert source.names_of("acme") == frozenset()  # undelegated within a poll or two
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_unreadable_answers_count_as_no_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not json")

    source = HttpDelegations(["http://pce"], None, transport=httpx.MockTransport(handler))
    await source.start()
    try:
        assert not await source.refresh()
        assert source.current() is None
        assert "unreadable" in source.health()["error"]
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_the_real_pce_hands_its_delegations_to_the_operator_token_only(env: Env) -> None:
    async with running(env) as pce:
        ops = {"Authorization": f"Bearer {env.operator}"}
        await pce.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
        await pce.http.put("/v1/delegations/eu.x.example", json={"tenant": "globex"}, headers=ops)
        transport = pce.http._transport
        source = HttpDelegations(["http://pce"], env.operator, transport=transport)
        await source.start()
        try:
            assert await source.refresh()
            known = source.current()
            assert known is not None
            assert known.owners == {"x.example": "acme", "eu.x.example": "globex"}
            assert known.scope_of("acme").sees_fqdn("cdn.x.example")
            assert not known.scope_of("acme").sees_fqdn("a.eu.x.example")
            await pce.http.delete("/v1/delegations/eu.x.example", headers=ops)
            assert await source.refresh()
            assert source.names_of("globex") == frozenset()
        finally:
            await source.stop()
        # A tenant's token would see only its own delegations: the CLMC uses the operator's.
        router = env.tokens.issue("sr-a", Role.ROUTER)
        source = HttpDelegations(["http://pce"], router, transport=transport)
        await source.start()
        try:
            assert not await source.refresh()
            assert "HTTP 403" in source.health()["error"]
        finally:
            await source.stop()


def test_static_delegations_and_access() -> None:
    static = StaticDelegations({"x.example": "acme"})
    assert static.health() == {"source": "static", "state": "ok", "delegations": 1}
    assert static.names_of("acme") == {"x.example"}
    assert access_for(Principal("ops", Role.OPERATOR), static) is None
    acme = access_for(Principal("acme-bot", Role.TENANT, "acme"), static)
    assert acme is not None
    assert acme.rows is not None
    assert acme.may_read("flame")
    assert not acme.may_change("flame")
    assert acme.may_change("acme_tv")
    router = access_for(Principal("sr-a", Role.ROUTER), static)
    assert router is not None
    assert not router.may_read("flame")
    assert access_for(Principal("acme-bot", Role.TENANT, "acme"), None).rows is None  # type: ignore[union-attr]


def test_delegation_maps_compare_by_content() -> None:
    a = DelegationMap({"x.example": "acme"})
    assert a == DelegationMap([("x.example", "acme")])
    assert a != DelegationMap({"x.example": "globex"})
    assert json.dumps(dict(a.owners)) == '{"x.example": "acme"}'
