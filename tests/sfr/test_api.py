"""The PCE service and its HTTP API (SFR-4, 7, 10, 11, 13, 20; SFEMC-7).

In process (httpx's ASGI transport): table versions (grow only, only with content, only for the
SRs a change touches), persistence across restarts, long-poll distribution, authentication and
authorisation, JSON errors, a standby on the same database. Against real `flame serve pce`
processes on 127.0.0.1: long-poll over the network, and a standby taking over when the active
PCE is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

import flame.sfr.service.changes as service_module
from eventually import Fatal, eventually, eventually_async
from flame.common.auth import Role, TokenStore
from flame.common.errors import AuthenticationError, PermissionDenied, UserError
from flame.common.ports import free_port
from flame.sfr.api import create_app
from flame.sfr.client import AsyncPceClient, PceClient, PceUnavailable
from flame.sfr.models import Endpoint, ForwardingTable, LinkLatency, LinkState, RoutingPolicy
from flame.sfr.registry import Conflict, NotFound
from flame.sfr.service import PceRole, PceService
from flame.sfr.store import NotActive, PersistedState, Store
from flame.topology.loader import load_topology
from flame.topology.model import Topology

LINE = """\
flame_topology: 1
name: line
locations:
  bristol: {latitude: 51.45, longitude: -2.59}
service_routers:
  sr-a: {location: bristol}
  sr-b: {}
  sr-c: {}
  sr-d: {}
  sr-e: {}
clusters:
  c-a: {sr: sr-a, location: bristol, capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}}
  c-d: {sr: sr-d, capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}}
user_equipment:
  ue-1: {sr: sr-a}
links:
  - {between: [sr-a, sr-b], latency: 1}
  - {between: [sr-b, sr-c], latency: 5}
  - {between: [sr-c, sr-d], latency: 1}
  - {between: [sr-d, sr-e], latency: 2}
  - {between: [sr-a, sr-c], latency: 10}
registrations:
  - {fqdn: static.example, cluster: c-a, host: 127.0.0.1, port: 9000}
"""
SRS = ("sr-a", "sr-b", "sr-c", "sr-d", "sr-e")


def x_endpoint(sfe: str = "x-d", cluster: str = "c-d", port: int = 9001, **kw: Any) -> Endpoint:
    return Endpoint(sfe=sfe, fqdn="x.example", cluster=cluster, host="127.0.0.1", port=port, **kw)


@dataclass
class Env:
    tmp: Path
    topology_path: Path
    db: Path
    tokens: TokenStore
    operator: str
    acme: str
    globex: str

    def topology(self) -> Topology:
        return load_topology(self.topology_path)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    topology_path = tmp_path / "line.yaml"
    topology_path.write_text(LINE, encoding="utf-8")
    tokens = TokenStore(tmp_path / "state" / "tokens.json")
    return Env(
        tmp=tmp_path,
        topology_path=topology_path,
        db=tmp_path / "pce.sqlite3",
        tokens=tokens,
        operator=tokens.issue("ops", Role.OPERATOR),
        acme=tokens.issue("acme-sfemc", Role.TENANT, "acme"),
        globex=tokens.issue("globex-bot", Role.TENANT, "globex"),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Pce:
    service: PceService
    http: httpx.AsyncClient  # no credentials: pass headers=bearer(...)
    env: Env

    async def table(self, sr: str) -> ForwardingTable:
        r = await self.http.get(f"/v1/tables/{sr}", headers=bearer(self.env.operator))
        assert r.status_code == 200, r.text
        return ForwardingTable.from_dict(r.json())

    async def versions(self) -> dict[str, int]:
        return {sr: (await self.table(sr)).version for sr in SRS}


@contextlib.asynccontextmanager
async def running(
    env: Env, *, holder: str = "pce-1", lease_ttl: float = 10.0, renew_every: float | None = None
) -> AsyncIterator[Pce]:
    store = Store(env.db, holder, lease_ttl=lease_ttl)
    service = PceService(env.topology(), store, renew_every=renew_every)
    app = create_app(service, env.tokens)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://pce") as http,
        ):
            yield Pce(service, http, env)
    finally:
        store.close()


def peek(db: Path) -> PersistedState:
    """What another process would read from the database."""
    with contextlib.closing(Store(db, "peek")) as store:
        return store.load()


@pytest_asyncio.fixture
async def pce(env: Env) -> AsyncIterator[Pce]:
    async with running(env) as p:
        yield p


async def register(pce: Pce, endpoint: Endpoint, token: str | None = None) -> httpx.Response:
    body = {k: v for k, v in endpoint.to_dict().items() if v is not None}
    return await pce.http.post(
        "/v1/registrations", json=body, headers=bearer(token or pce.env.operator)
    )


# -- tables and versions (SFR-4, SFR-11, SFR-13) --------------------------------------------


@pytest.mark.asyncio
async def test_first_tables_are_version_1_with_the_static_registration(pce: Pce) -> None:
    assert await pce.versions() == dict.fromkeys(SRS, 1)
    table = await pce.table("sr-e")
    (route,) = table.routes["static.example"]
    assert route.endpoint.sfe == "static.example@c-a"
    assert route.egress_sr == "sr-a"
    assert route.path == ("sr-e", "sr-d", "sr-c", "sr-b", "sr-a")
    assert route.latency_ms == 9.0


@pytest.mark.asyncio
async def test_a_registration_reaches_every_sr_ranked_by_latency(pce: Pce) -> None:
    assert (await register(pce, x_endpoint())).status_code == 201
    assert (await register(pce, x_endpoint("x-a", "c-a", 9002))).status_code == 201
    assert await pce.versions() == dict.fromkeys(SRS, 3)
    a, e = await pce.table("sr-a"), await pce.table("sr-e")
    assert [(r.endpoint.sfe, r.cost) for r in a.routes["x.example"]] == [("x-a", 0.0), ("x-d", 7.0)]
    assert [(r.endpoint.sfe, r.cost) for r in e.routes["x.example"]] == [("x-d", 2.0), ("x-a", 9.0)]


@pytest.mark.asyncio
async def test_unchanged_content_gets_no_new_version(pce: Pce) -> None:
    await register(pce, x_endpoint())
    before = await pce.versions()
    again = await register(pce, x_endpoint())
    assert again.status_code == 200
    assert again.json()["changed"] is False
    # A link that is on no shortest path gets slower: no tree, no table changes.
    r = await pce.http.put(
        "/v1/topology/links/sr-a/sr-c", json={"latency_ms": 50}, headers=bearer(pce.env.operator)
    )
    assert r.status_code == 200, r.text
    assert r.json()["versions"] == {}
    # Taking a link down that is already down, and a cost under the latency metric.
    await pce.http.post("/v1/topology/links/sr-a/sr-c/down", headers=bearer(pce.env.operator))
    again_down = await pce.http.post(
        "/v1/topology/links/sr-a/sr-c/down", headers=bearer(pce.env.operator)
    )
    assert again_down.json()["changed"] is False
    await pce.http.put(
        "/v1/topology/links/sr-b/sr-c", json={"cost": 99}, headers=bearer(pce.env.operator)
    )
    assert await pce.versions() == before


@pytest.mark.asyncio
async def test_a_link_change_bumps_only_the_srs_whose_tables_change(pce: Pce) -> None:
    """SFR-13: sr-d—sr-e is a leaf link: every tree reaches sr-e over it, but only sr-e's own
    routes run over it, so only sr-e gets a new table."""
    await register(pce, x_endpoint())
    before = await pce.versions()
    r = await pce.http.put(
        "/v1/topology/links/sr-d/sr-e", json={"latency_ms": 4}, headers=bearer(pce.env.operator)
    )
    assert r.status_code == 200, r.text
    assert r.json()["versions"] == {"sr-e": before["sr-e"] + 1}
    after = await pce.versions()
    assert after == {**before, "sr-e": before["sr-e"] + 1}
    (route,) = (await pce.table("sr-e")).routes["x.example"]
    assert route.latency_ms == 4.0


@pytest.mark.asyncio
async def test_link_down_reroutes_and_up_restores_with_newer_versions(pce: Pce) -> None:
    await register(pce, x_endpoint())
    ops = bearer(pce.env.operator)
    v0 = await pce.versions()
    down = await pce.http.post("/v1/topology/links/sr-b/sr-c/down", headers=ops)
    assert down.status_code == 200
    assert set(down.json()["versions"]) == set(SRS)
    (route,) = (await pce.table("sr-a")).routes["x.example"]
    assert route.path == ("sr-a", "sr-c", "sr-d")
    assert route.cost == 11.0
    topo = (await pce.http.get("/v1/topology", headers=ops)).json()
    states = {(k["a"], k["b"]): k["state"] for k in topo["links"]}
    assert states[("sr-b", "sr-c")] == "down"
    await pce.http.post("/v1/topology/links/sr-b/sr-c/up", headers=ops)
    (route,) = (await pce.table("sr-a")).routes["x.example"]
    assert route.cost == 7.0  # the original route, under a newer version: never an old one
    assert all(v == v0[sr] + 2 for sr, v in (await pce.versions()).items())


@pytest.mark.asyncio
async def test_an_unreachable_endpoint_leaves_an_empty_entry_not_an_unknown_name(pce: Pce) -> None:
    await register(pce, x_endpoint())
    await pce.http.post("/v1/topology/links/sr-c/sr-d/down", headers=bearer(pce.env.operator))
    table = await pce.table("sr-a")
    assert table.routes["x.example"] == ()  # the SR answers 503, not 502
    r = await pce.http.delete("/v1/registrations/x-d", headers=bearer(pce.env.operator))
    assert r.status_code == 200
    assert "x.example" not in (await pce.table("sr-a")).routes  # now unknown: 502


@pytest.mark.asyncio
async def test_nodes_join_and_leave_at_run_time(pce: Pce) -> None:
    ops = bearer(pce.env.operator)
    body = {
        "id": "c-e",
        "kind": "cluster",
        "sr": "sr-e",
        "location": "bristol",
        "capacity": {"cpus": 2, "memory_bytes": 10**9, "disk_bytes": 10**10},
    }
    r = await pce.http.post("/v1/topology/nodes", json=body, headers=ops)
    assert r.status_code == 201, r.text
    assert r.json()["node"]["location"] == {"latitude": 51.45, "longitude": -2.59}
    assert (await register(pce, x_endpoint("x-e", "c-e"))).status_code == 201
    (route,) = (await pce.table("sr-e")).routes["x.example"]
    assert route.endpoint.sfe == "x-e"
    assert route.cost == 0.0
    r = await pce.http.post(
        "/v1/topology/nodes",
        json={"id": "sr-f", "kind": "service_router", "links": [{"to": "sr-e", "latency_ms": 1}]},
        headers=ops,
    )
    assert r.status_code == 201, r.text
    assert (await pce.table("sr-f")).routes["x.example"][0].path == ("sr-f", "sr-e")
    assert (await pce.http.delete("/v1/topology/nodes/c-e", headers=ops)).status_code == 200
    # The registration stays (the cluster may come back); its routes are gone.
    assert (await pce.table("sr-f")).routes["x.example"] == ()
    assert (await pce.http.delete("/v1/topology/nodes/sr-f", headers=ops)).status_code == 200
    gone = await pce.http.get("/v1/tables/sr-f", headers=ops)
    assert gone.status_code == 404


# -- persistence: restarts and standbys (SFR-20) ----------------------------------------------


@pytest.mark.asyncio
async def test_a_restart_rebuilds_the_same_state_with_the_same_versions(env: Env) -> None:
    async with running(env) as first:
        ops = bearer(env.operator)
        await first.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
        await register(first, x_endpoint(tenant="acme"))
        await first.http.put(
            "/v1/policies/x.example", json={"max_latency_ms": 8}, headers=bearer(env.acme)
        )
        await first.http.post("/v1/topology/links/sr-d/sr-e/down", headers=ops)
        tables = {sr: await first.table(sr) for sr in SRS}
        registry_version = first.service.registry_version
    async with running(env, holder="pce-2") as second:
        for sr in SRS:
            assert await second.table(sr) == tables[sr]  # same routes under the same version
        assert second.service.registry_version == registry_version
        r = await second.http.get("/v1/registrations", headers=bearer(env.acme))
        assert [x["sfe"] for x in r.json()["registrations"]] == ["x-d"]
        r = await second.http.get("/v1/policies/x.example", headers=bearer(env.acme))
        assert r.json()["max_latency_ms"] == 8.0
        # The link is still down, and new changes continue above the persisted versions.
        up = await second.http.post("/v1/topology/links/sr-d/sr-e/up", headers=bearer(env.operator))
        assert up.json()["versions"] == {"sr-e": tables["sr-e"].version + 1}


@pytest.mark.asyncio
async def test_editing_the_topology_file_supersedes_run_time_changes(env: Env) -> None:
    async with running(env) as first:
        await first.http.post("/v1/topology/links/sr-b/sr-c/down", headers=bearer(env.operator))
        before = await first.versions()
    env.topology_path.write_text(LINE.replace("latency: 5}", "latency: 4}"), encoding="utf-8")
    async with running(env) as second:
        topo = (await second.http.get("/v1/topology", headers=bearer(env.operator))).json()
        assert all(k["state"] == "up" for k in topo["links"])
        after = await second.versions()
        # sr-a and sr-b reach c-a the same way in both: same versions; the rest differ.
        assert after == {sr: v + (sr in ("sr-c", "sr-d", "sr-e")) for sr, v in before.items()}


@pytest.mark.asyncio
async def test_static_registrations_follow_the_file_across_restarts(env: Env) -> None:
    """SFR-10: the file is the source of static entries; API ones survive beside them."""
    async with running(env) as first:
        await register(first, x_endpoint())
    env.topology_path.write_text(
        LINE.replace(
            "port: 9000}",
            "port: 9000}\n  - {fqdn: x.example, cluster: c-a, host: 127.0.0.2, port: 80, sfe: x-a}",
        ),
        encoding="utf-8",
    )
    async with running(env) as second:
        r = await second.http.get("/v1/registrations", headers=bearer(env.operator))
        found = {x["sfe"]: x["origin"] for x in r.json()["registrations"]}
        assert found == {"static.example@c-a": "config", "x-a": "config", "x-d": "api"}
    env.topology_path.write_text(
        LINE[: LINE.index("registrations:")],
        encoding="utf-8",  # no static entries at all
    )
    async with running(env) as third:
        r = await third.http.get("/v1/registrations", headers=bearer(env.operator))
        assert [x["sfe"] for x in r.json()["registrations"]] == ["x-d"]
        assert "static.example" not in (await third.table("sr-a")).routes


@pytest.mark.asyncio
async def test_the_change_log_is_compacted_and_replays_the_same(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "COMPACT_AFTER", 3)
    async with running(env) as first:
        for latency in (3, 4, 5, 6):
            first.service.apply_changes([LinkLatency("sr-d", "sr-e", latency)])
        first.service.apply_changes([LinkState("sr-a", "sr-c", up=False)])
        tables = {sr: await first.table(sr) for sr in SRS}
        persisted = peek(env.db)
        assert persisted.snapshot is not None
        assert len(persisted.changes) == 2  # the fourth change made the snapshot
    async with running(env) as second:
        assert {sr: await second.table(sr) for sr in SRS} == tables


@pytest.mark.asyncio
async def test_a_standby_answers_503_and_takes_over_when_the_active_stops(env: Env) -> None:
    async with running(env, holder="a", lease_ttl=2.0, renew_every=0.05) as active:
        await register(active, x_endpoint())
        tables = {sr: await active.table(sr) for sr in SRS}
        async with running(env, holder="b", lease_ttl=2.0, renew_every=0.05) as standby:
            assert standby.service.role is PceRole.STANDBY
            r = await standby.http.get("/v1/tables/sr-a", headers=bearer(env.operator))
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "pce_not_active"
            assert "'a'" in r.json()["message"]
            health = (await standby.http.get("/health")).json()
            assert health["role"] == "standby"
            await active.service.stop()  # releases the lease: no waiting for its expiry
            await eventually_async(
                lambda: standby.service.role is PceRole.ACTIVE, what="the standby to take over"
            )
            assert {sr: await standby.table(sr) for sr in SRS} == tables
            r = await register(standby, x_endpoint(port=9999))
            assert r.status_code == 200
            assert (await standby.table("sr-a")).version == tables["sr-a"].version + 1


@pytest.mark.asyncio
async def test_a_pce_that_lost_its_lease_steps_down_and_refuses_writes(env: Env) -> None:
    async with running(env, holder="a", renew_every=60) as pce:
        with contextlib.closing(Store(env.db, "thief")) as thief:
            # The lease taken behind its back, as if it had stalled past its expiry.
            thief._db.execute("UPDATE lease SET holder = 'thief', expires = 1e12")
        with pytest.raises(NotActive):
            pce.service.apply_changes([LinkState("sr-a", "sr-b", up=False)])
        assert pce.service.role is PceRole.STANDBY
        r = await pce.http.get("/v1/tables/sr-a", headers=bearer(env.operator))
        assert r.status_code == 503
        assert peek(env.db).changes == []  # nothing was written


# -- long-poll distribution (SFR-11) --------------------------------------------------------


@pytest.mark.asyncio
async def test_long_poll_answers_at_once_when_newer(pce: Pce) -> None:
    r = await pce.http.get("/v1/tables/sr-a?since=0&wait=30", headers=bearer(pce.env.operator))
    assert r.status_code == 200
    assert r.headers["x-flame-table-version"] == "1"
    assert r.headers["x-flame-pce-generation"] == pce.service.generation != ""


@pytest.mark.asyncio
async def test_long_poll_wakes_on_change_and_times_out_with_304(pce: Pce) -> None:
    ops = bearer(pce.env.operator)
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll_e = asyncio.create_task(pce.http.get("/v1/tables/sr-e?since=1&wait=20", headers=ops))
    poll_a = asyncio.create_task(pce.http.get("/v1/tables/sr-a?since=1&wait=0.5", headers=ops))
    await asyncio.sleep(0.1)
    assert not poll_e.done()
    await pce.http.put("/v1/topology/links/sr-d/sr-e", json={"latency_ms": 7}, headers=ops)
    r = await poll_e
    assert r.status_code == 200
    assert r.json()["version"] == 2
    assert loop.time() - started < 15  # woken by the change, not the 20 s wait
    unchanged = await poll_a  # sr-a's table did not change: 304 after its wait
    assert unchanged.status_code == 304
    assert unchanged.headers["x-flame-table-version"] == "1"
    assert unchanged.content == b""


@pytest.mark.asyncio
async def test_waiters_are_woken_when_the_pce_steps_down(env: Env) -> None:
    async with running(env) as pce:
        poll = asyncio.create_task(
            pce.http.get("/v1/tables/sr-a?since=1&wait=30", headers=bearer(env.operator))
        )
        await asyncio.sleep(0.1)
        await pce.service.stop()
        r = await asyncio.wait_for(poll, 5)
        assert r.status_code == 503


# -- authentication and errors (always JSON) -------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "unsupported authorization scheme"),
        ({"Authorization": "Bearer nope"}, "malformed bearer token"),
        ({"Authorization": "Bearer flm_" + "x" * 43}, "unknown or revoked token"),
    ],
)
async def test_401_is_json_with_www_authenticate(
    pce: Pce, headers: dict[str, str], words: str
) -> None:
    r = await pce.http.get("/v1/topology", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "authentication_error"
    assert words in r.json()["message"]


@pytest.mark.asyncio
async def test_authentication_comes_before_validation_and_routing(pce: Pce) -> None:
    bad_json = await pce.http.post(
        "/v1/registrations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 401
    unknown_route = await pce.http.get("/v1/secret-things")
    assert unknown_route.status_code == 401


@pytest.mark.asyncio
async def test_health_needs_no_token(pce: Pce) -> None:
    r = await pce.http.get("/health")
    assert r.status_code == 200
    assert r.json()["role"] == "active"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/topology/links/sr-a/sr-b/down", None),
        ("POST", "/v1/topology/links/sr-a/sr-b/up", None),
        ("PUT", "/v1/topology/links/sr-a/sr-b", {"latency_ms": 3}),
        ("POST", "/v1/topology/nodes", {"id": "sw-9", "kind": "switch"}),
        ("DELETE", "/v1/topology/nodes/sr-e", None),
        ("PUT", "/v1/delegations/x.example", {"tenant": "acme"}),
        ("DELETE", "/v1/delegations/x.example", None),
        ("GET", "/v1/tables/sr-a", None),
    ],
)
async def test_tenants_get_403_on_operator_routes(
    pce: Pce, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = await pce.http.request(method, path, json=body, headers=bearer(pce.env.acme))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "permission_denied"
    assert (await pce.versions()) == dict.fromkeys(SRS, 1)  # nothing happened


@pytest.mark.asyncio
async def test_tenant_isolation_over_the_api(pce: Pce) -> None:
    """SFR-11 / SFEMC-7: names by delegation, registrations seen only by their owner."""
    ops, acme, globex = (bearer(t) for t in (pce.env.operator, pce.env.acme, pce.env.globex))
    r = await pce.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
    assert r.json() == {"name": "x.example", "tenant": "acme"}
    mine = await register(pce, x_endpoint(tenant="acme"))  # the SFEMC, for acme
    assert mine.status_code == 201
    assert mine.json()["registration"]["tenant"] == "acme"
    sub = x_endpoint("x-eu", tenant="acme")
    sub = Endpoint(**{**sub.to_dict(), "fqdn": "eu.x.example"})
    assert (await register(pce, sub)).status_code == 201  # *.x.example too
    listing = await pce.http.get("/v1/registrations", headers=globex)
    assert listing.json()["registrations"] == []
    listing = await pce.http.get("/v1/registrations", headers=acme)
    assert [x["sfe"] for x in listing.json()["registrations"]] == ["x-d", "x-eu"]
    everyone = await pce.http.get("/v1/registrations", headers=ops)
    assert len(everyone.json()["registrations"]) == 3  # with the static one
    for tenant in (acme, globex):  # only the SFEMC (operator) connects or withdraws endpoints
        gone = await pce.http.delete("/v1/registrations/x-d", headers=tenant)
        assert gone.status_code == 403
    routes = await pce.http.get("/v1/routes/x.example", headers=globex)
    assert routes.status_code == 403
    assert (await pce.http.get("/v1/delegations", headers=globex)).json()["delegations"] == []
    assert (await pce.http.delete("/v1/registrations/x-d", headers=ops)).status_code == 200


@pytest.mark.asyncio
async def test_a_tenant_cannot_point_its_fqdn_at_the_platform(pce: Pce) -> None:
    """Issue 11 finding 5: a tenant registered its FQDN at the PCE's own address; the SRs then
    proxied the public to the control plane. Only the operator (the SFEMC) registers."""
    ops = bearer(pce.env.operator)
    await pce.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
    attack = x_endpoint("evil", port=7070)
    before = await pce.versions()
    r = await register(pce, attack, pce.env.acme)
    assert r.status_code == 403
    assert r.json()["error"] == "permission_denied"
    assert "operator" in r.json()["message"]
    sfes = [
        x["sfe"]
        for x in (await pce.http.get("/v1/registrations", headers=ops)).json()["registrations"]
    ]
    assert "evil" not in sfes
    assert await pce.versions() == before


@pytest.mark.asyncio
async def test_policies_are_the_owners_and_reroute(pce: Pce) -> None:
    """SFR-6: prefer a cluster; SFEMC-7: only the owner sets it."""
    ops, acme, globex = (bearer(t) for t in (pce.env.operator, pce.env.acme, pce.env.globex))
    await pce.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
    await register(pce, x_endpoint(tenant="acme"))
    await register(pce, x_endpoint("x-a", "c-a", 9002, tenant="acme"))
    before = await pce.versions()
    assert (await pce.http.get("/v1/policies/x.example", headers=acme)).status_code == 404
    r = await pce.http.put(
        "/v1/policies/x.example", json={"prefer_clusters": ["c-d"]}, headers=acme
    )
    assert r.status_code == 200, r.text
    # sr-a and sr-b had c-a first; sr-c, sr-d and sr-e already preferred c-d.
    assert set(r.json()["versions"]) == {"sr-a", "sr-b"}
    assert (await pce.table("sr-a")).routes["x.example"][0].endpoint.sfe == "x-d"
    assert (
        await pce.http.put("/v1/policies/x.example", json={"prefer_clusters": []}, headers=globex)
    ).status_code == 403
    typo = await pce.http.put(
        "/v1/policies/x.example", json={"prefer_clusters": ["c-x"]}, headers=acme
    )
    assert typo.status_code == 400
    assert typo.json()["error"] == "policy_error"
    listed = (await pce.http.get("/v1/policies", headers=acme)).json()["policies"]
    assert [p["fqdn"] for p in listed] == ["x.example"]
    assert (await pce.http.get("/v1/policies", headers=globex)).json()["policies"] == []
    r = await pce.http.delete("/v1/policies/x.example", headers=acme)
    assert set(r.json()["versions"]) == {"sr-a", "sr-b"}
    assert all(v == before[sr] + 2 for sr, v in (await pce.versions()).items() if sr in "sr-a sr-b")


@pytest.mark.asyncio
async def test_routes_for_the_cli(pce: Pce) -> None:
    ops = bearer(pce.env.operator)
    await register(pce, x_endpoint())
    r = await pce.http.get("/v1/routes/X.Example?from=ue-1", headers=ops)  # a UE: its SR
    assert r.status_code == 200, r.text
    (table,) = [ForwardingTable.from_dict(t) for t in r.json()["tables"]]
    assert table.sr == "sr-a"
    assert [x.path for x in table.routes["x.example"]] == [("sr-a", "sr-b", "sr-c", "sr-d")]
    everywhere = (await pce.http.get("/v1/routes/x.example", headers=ops)).json()["tables"]
    assert [t["sr"] for t in everywhere] == list(SRS)
    nothing = await pce.http.get("/v1/routes/nothing.example", headers=ops)
    assert nothing.status_code == 404
    switch = await pce.http.get("/v1/routes/x.example?from=c-d", headers=ops)
    assert switch.status_code == 200  # a cluster: its SR
    assert switch.json()["tables"][0]["sr"] == "sr-d"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/v1/tables/sr-z", None, 404, "not_found"),
        ("POST", "/v1/topology/links/sr-a/sr-e/down", None, 404, "not_found"),
        ("POST", "/v1/topology/links/sr-a/sr-q/down", None, 404, "not_found"),
        ("DELETE", "/v1/registrations/nope", None, 404, "not_found"),
        ("DELETE", "/v1/delegations/nope.example", None, 404, "not_found"),
        ("GET", "/v1/no-such-route", None, 404, "not_found"),
        ("DELETE", "/v1/topology", None, 405, "method_not_allowed"),
        ("DELETE", "/v1/topology/nodes/sr-a", None, 409, "conflict"),
        ("POST", "/v1/topology/nodes", {"id": "sr-a", "kind": "switch"}, 409, "conflict"),
        ("DELETE", "/v1/registrations/static.example@c-a", None, 409, "conflict"),
        ("PUT", "/v1/topology/links/sr-a/sr-b", {}, 400, "user_error"),
        ("PUT", "/v1/delegations/localhost", {"tenant": "acme"}, 400, "user_error"),
        ("PUT", "/v1/delegations/x.example", {"tenant": "Not A Tenant"}, 400, "user_error"),
        ("POST", "/v1/topology/nodes", {"id": "c-9", "kind": "cluster"}, 400, "topology_error"),
        (
            "POST",
            "/v1/registrations",
            {"sfe": "e", "fqdn": "x.example", "cluster": "c-q", "host": "127.0.0.1", "port": 1},
            400,
            "user_error",
        ),
        ("POST", "/v1/registrations", {"sfe": "e"}, 422, "invalid_request"),
        (
            "POST",
            "/v1/registrations",
            {"sfe": "e", "fqdn": "x.example", "cluster": "c-a", "host": "h", "port": 70000},
            422,
            "invalid_request",
        ),
        ("PUT", "/v1/topology/links/sr-a/sr-b", {"latency_ms": -1}, 422, "invalid_request"),
        ("PUT", "/v1/topology/links/sr-a/sr-b", {"latency": 1}, 422, "invalid_request"),
        ("POST", "/v1/topology/nodes", {"id": "Bad Id", "kind": "switch"}, 422, "invalid_request"),
        ("POST", "/v1/topology/nodes", {"id": "n", "kind": "router"}, 422, "invalid_request"),
        ("GET", "/v1/tables/sr-a?wait=61", None, 422, "invalid_request"),
        ("GET", "/v1/tables/sr-a?since=abc", None, 422, "invalid_request"),
        ("PUT", "/v1/policies/x.example", {"metric": "fastest"}, 422, "invalid_request"),
    ],
)
async def test_errors_are_json_with_the_right_status(
    pce: Pce, method: str, path: str, body: Any, status: int, error: str
) -> None:
    r = await pce.http.request(method, path, json=body, headers=bearer(pce.env.operator))
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["error"] == error
    assert isinstance(doc["message"], str)
    assert doc["message"]
    assert "Traceback" not in r.text


@pytest.mark.asyncio
async def test_validation_errors_say_where(pce: Pce) -> None:
    r = await register(pce, x_endpoint(port=1))
    r = await pce.http.post(
        "/v1/registrations",
        json={"sfe": "e", "fqdn": "x.example", "cluster": "c-a", "host": "h", "port": "x"},
        headers=bearer(pce.env.operator),
    )
    assert r.status_code == 422
    assert r.json()["message"].startswith("body.port:")
    assert r.json()["errors"][0]["loc"] == ["body", "port"]


@pytest.mark.asyncio
async def test_internal_errors_are_500_json_without_a_traceback(
    pce: Pce, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Topology:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pce.service, "topology", broken)
    r = await pce.http.get("/v1/topology", headers=bearer(pce.env.operator))
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "message": "internal error in the PCE; see its log",
    }


# -- the typed client (what the SFEMC uses) ----------------------------------------------------


@pytest.mark.asyncio
async def test_async_client_registers_withdraws_and_maps_errors(pce: Pce) -> None:
    transport = pce.http._transport  # the same app, in process
    async with AsyncPceClient("http://pce", pce.env.operator, transport=transport) as sfemc:
        registration = await sfemc.register(x_endpoint(tenant="acme"))
        assert registration.endpoint.tenant == "acme"
        table = (await sfemc.table("sr-e", since=1)).table
        assert table is not None
        assert table.routes["x.example"][0].endpoint.sfe == "x-d"
        nothing = await sfemc.table("sr-e", since=table.version, wait=0.1)
        assert nothing.table is None
        assert nothing.version == table.version
        await sfemc.withdraw("x-d")
        with pytest.raises(NotFound):
            await sfemc.withdraw("x-d")
        with pytest.raises(Conflict):
            await sfemc.withdraw("static.example@c-a")
        with pytest.raises(UserError, match="unknown cluster"):
            await sfemc.register(x_endpoint(cluster="c-zz"))
        await sfemc.delegate("x.example", "acme")
        await sfemc.set_policy(RoutingPolicy("x.example", max_latency_ms=5))
        assert (await sfemc.policy("x.example")).max_latency_ms == 5
    async with AsyncPceClient("http://pce", pce.env.globex, transport=transport) as tenant:
        with pytest.raises(PermissionDenied) as denied:
            await tenant.register(x_endpoint())
        assert "requires the operator role" in denied.value.message
    async with AsyncPceClient("http://pce", None, transport=transport) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.registrations()


def test_client_reports_an_unreachable_pce_clearly() -> None:
    port = free_port()
    with (
        PceClient(f"http://127.0.0.1:{port}", "flm_x", timeout=2) as client,
        pytest.raises(PceUnavailable) as info,
    ):
        client.topology()
    assert f"127.0.0.1:{port}" in info.value.message
    assert "flame serve pce" in info.value.message
    assert info.value.exit_code == 1


# -- real servers: long-poll over the network and failover (SFR-20) ----------------------------


@dataclass
class LivePce:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(self.url + "/health", timeout=1)
        except httpx.HTTPError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_role(self, role: str) -> None:
        def health() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise Fatal(f"PCE exited ({self.process.returncode}):\n{self.log.read_text()}")
            return self.health()

        eventually(
            health,
            until=lambda h: h is not None and h["role"] == role,
            what=lambda: f"the PCE to become {role}:\n{self.log.read_text()[-4000:]}",
        )


@contextlib.contextmanager
def live_pce(
    state_dir: Path,
    topology: Path,
    db: Path,
    name: str,
    *,
    lease_ttl: float = 1.0,
    extra: tuple[str, ...] = (),
) -> Iterator[LivePce]:
    """`flame serve pce` as a real process on 127.0.0.1; always stopped (killed if need be)."""
    port = free_port()
    config = state_dir / "config.toml"
    config.touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state_dir),
        "FLAME_LOG_LEVEL": "INFO",
    }
    log = state_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flame",
                "serve",
                "pce",
                "--topology",
                str(topology),
                "--db",
                str(db),
                "--port",
                str(port),
                "--lease-ttl",
                str(lease_ttl),
                "--name",
                name,
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield LivePce(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.mark.slow
def test_live_long_poll_and_a_standby_taking_over_a_killed_pce(env: Env) -> None:
    state_dir = env.tokens.path.parent
    with live_pce(state_dir, env.topology_path, env.db, "alpha") as alpha:
        alpha.wait_role("active")
        with live_pce(state_dir, env.topology_path, env.db, "beta") as beta:
            beta.wait_role("standby")
            failover(env, alpha, beta)


def failover(env: Env, alpha: LivePce, beta: LivePce) -> None:
    # The SFEMC knows both PCEs; the active one answers.
    with PceClient([alpha.url, beta.url], env.operator, timeout=5) as client:
        client.register(x_endpoint())
        first = client.table("sr-e").table
        assert first is not None

        # Long-poll over a real socket: held until the change, then answered at once.
        answer = long_poll_during(
            env,
            alpha.url,
            "sr-e",
            first.version,
            lambda: client.update_link("sr-d", "sr-e", latency_ms=5),
        )
        assert answer.json()["version"] == first.version + 1
        held = client.table("sr-e").table
        assert held is not None

        # Kill the active PCE: no clean shutdown, its lease (1 s) is left to expire.
        killed = time.monotonic()
        alpha.process.kill()
        alpha.process.wait(5)
        beta.wait_role("active")
        # The lease is 1 s; the standby takes over within ~2 s here: a 10 s bound is 5x that.
        assert time.monotonic() - killed < 10
        # The standby rebuilt the same state: the same version for the same routes.
        assert client.table("sr-e").table == held
        sfes = [r.endpoint.sfe for r in client.registrations()]
        assert sfes == ["static.example@c-a", "x-d"]
        answer = long_poll_during(
            env, beta.url, "sr-e", held.version, lambda: client.link_down("sr-d", "sr-e")
        )
        assert answer.json()["version"] == held.version + 1  # versions keep growing
        assert answer.json()["routes"]["x.example"] == []


def long_poll_during(
    env: Env, url: str, sr: str, since: int, change: Callable[[], object]
) -> httpx.Response:
    """Start an SR's long-poll, check it is held, make the change, return the answer."""
    with (
        httpx.Client(headers=bearer(env.operator), timeout=30) as http,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        started = time.monotonic()
        poll = pool.submit(http.get, f"{url}/v1/tables/{sr}", params={"since": since, "wait": 20})
        time.sleep(0.3)
        assert not poll.done(), "the long-poll was not held"
        change()
        answer = poll.result(10)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 15  # woken by the change, not by the 20 s wait
    return answer


@pytest.mark.slow
def test_a_stopping_pce_answers_its_long_polls_at_once_and_logs_no_error(env: Env) -> None:
    """Issue 14 item 7: every `flame down` made the PCE log ERROR with two tracebacks, its
    long polls cancelled by uvicorn's graceful-shutdown timeout."""
    state_dir = env.tokens.path.parent
    with live_pce(state_dir, env.topology_path, env.db, "alpha") as pce:
        pce.wait_role("active")
        with PceClient(pce.url, env.operator, timeout=5) as client:
            version = client.table("sr-e").table
        assert version is not None
        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(
                httpx.get,
                f"{pce.url}/v1/tables/sr-e",
                params={"since": version.version, "wait": 30},
                headers=bearer(env.operator),
                timeout=40,
            )
            time.sleep(0.5)  # the poll is held
            pce.process.terminate()
            answer = poll.result(timeout=20)
        # 304, not a cut connection: answered at the stop, not cancelled by uvicorn's 2 s
        # graceful-shutdown timeout (which also logged the ERROR checked below). No time bound:
        # 1.5 s against 2 s is no margin on a loaded machine.
        assert answer.status_code == 304
        assert pce.process.wait(10) in (0, -15)  # uvicorn re-raises SIGTERM once done
    text = pce.log.read_text()
    assert "stopped and released the lease" in text
    assert " ERROR " not in text
    assert "Traceback" not in text
