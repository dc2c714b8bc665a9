"""Issue 13 item 3: the PCE's state and lease on PostgreSQL (`PgStore`), no shared file.

Against a throwaway PostgreSQL server (Debian's postgresql, tests/sfemc/pg.py): the lease on the
database's clock, a holder whose session ended freed at once, fencing of a PCE that lost it, the
same persisted state as SQLite for the same writes, and a PCE service failing over in-process.
Real processes killed with SIGKILL: tests/sfr/test_store_pg_failover.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from eventually import eventually, eventually_async
from flame.common.errors import ConfigError
from flame.common.ports import free_port
from flame.sfr.api import create_app
from flame.sfr.models import LinkState, RoutingPolicy
from flame.sfr.registry import Delegation, Registration
from flame.sfr.service import PceRole, PceService
from flame.sfr.store import LeaseOutcome, NotActive, PgStore, Store, open_pce_store
from flame.topology.loader import load_topology
from sfemc.pg import postgres_server, postgres_url

from .test_api import SRS, Env, bearer, env, x_endpoint

__all__ = ["env", "postgres_server", "postgres_url"]


def acquired_after(store: PgStore) -> float:
    """How long `store` polled before it took the lease (the server ends a closed session's
    backend asynchronously, a few milliseconds after the client's close)."""
    started = time.monotonic()
    eventually(
        store.acquire, until=lambda o: o is LeaseOutcome.ACQUIRED, every=0.01, what="the lease"
    )
    return time.monotonic() - started


def admin(url: str) -> object:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_the_lease_is_one_holder_at_a_time_and_fenced(postgres_url: str) -> None:
    a = PgStore(postgres_url, "a", lease_ttl=30.0)
    b = PgStore(postgres_url, "b", lease_ttl=30.0)
    try:
        assert a.acquire() is LeaseOutcome.ACQUIRED
        assert b.acquire() is LeaseOutcome.HELD
        assert a.acquire() is LeaseOutcome.RENEWED
        lease = a.lease()
        assert lease is not None
        assert (lease.holder, lease.epoch) == ("a", 1)
        with pytest.raises(NotActive), b.write() as w:
            w.put_delegation(Delegation("x.example", "acme"))
        with a.write() as w:
            w.put_delegation(Delegation("x.example", "acme"))
        assert [d.name for d in b.load().delegations] == ["x.example"]
        # The holder's session ends without a word (its process killed): free at once, not
        # after the 30 s expiry.
        a.close()
        assert acquired_after(b) < 10.0  # not the 30 s of its expiry (a few ms here)
        assert (b.lease().holder, b.lease().epoch) == ("b", 2)  # type: ignore[union-attr]
        # The old holder comes back: it holds nothing and can write nothing.
        assert a.acquire() is LeaseOutcome.HELD
        with pytest.raises(NotActive), a.write() as w:
            w.delete_delegation("x.example")
        assert [d.name for d in b.load().delegations] == ["x.example"]
    finally:
        a.close()
        b.close()


def test_a_live_holder_keeps_it_until_its_expiry_on_the_database_clock(
    postgres_url: str,
) -> None:
    a = PgStore(postgres_url, "a", lease_ttl=0.6)
    b = PgStore(postgres_url, "b", lease_ttl=0.6)
    try:
        assert a.acquire() is LeaseOutcome.ACQUIRED
        assert b.acquire() is LeaseOutcome.HELD  # a's session lives: it must expire first
        time.sleep(0.7)  # a stalls past its expiry
        assert b.acquire() is LeaseOutcome.ACQUIRED
        with pytest.raises(NotActive), a.write():
            pass  # the stalled PCE cannot write over its successor
        assert a.acquire() is LeaseOutcome.HELD
    finally:
        a.close()
        b.close()


def test_a_pce_that_loses_its_database_steps_down(postgres_url: str) -> None:
    a = PgStore(postgres_url, "a", lease_ttl=30.0)
    b = PgStore(postgres_url, "b", lease_ttl=30.0)
    try:
        assert a.acquire() is LeaseOutcome.ACQUIRED
        # The server drops a's session (a network cut, a database restart).
        with admin(postgres_url) as conn:  # type: ignore[attr-defined]
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'flame-pce a'"
            )
        assert acquired_after(b) < 10.0  # a's session is gone: not its 30 s expiry
        assert a.acquire() is LeaseOutcome.HELD  # a reconnects and finds it taken
        # A database that cannot be reached at all: HELD, never "still mine" (and no raise).
        closed = free_port()  # nothing listens there (never a bind(0) port another test reuses)
        b.close()
        b.url = f"postgresql://flame@127.0.0.1:{closed}/nothing"
        assert b.acquire() is LeaseOutcome.HELD
        assert b.lease() is None
    finally:
        a.close()
        b.close()


def test_the_same_writes_persist_the_same_state_as_sqlite(postgres_url: str, env: Env) -> None:
    topology = env.topology()
    registration = Registration(x_endpoint())
    policy = RoutingPolicy("x.example", prefer_clusters=("c-d",))

    def write(store: Store) -> None:
        assert store.acquire() is LeaseOutcome.ACQUIRED
        with store.write() as w:
            w.rebase("digest-1")
            assert w.add_change(LinkState("sr-a", "sr-b", False)) == 1
            assert w.add_change(LinkState("sr-a", "sr-b", True)) == 2
            w.put_registration(registration)
            w.put_registration(registration)  # an upsert, not a duplicate
            w.put_delegation(Delegation("x.example", "acme"))
            w.put_delegation(Delegation("x.example", "globex"))
            w.put_delegation(Delegation("y.example", "acme"))
            w.delete_delegation("y.example")
            w.put_policy(policy)
            w.set_registry_version(7)
            w.put_tables({"sr-a": (3, "d3"), "sr-b": (1, "d1"), "sr-c": (2, "d2")})
            w.put_tables({"sr-a": (4, "d4")})
            w.delete_tables(["sr-c"])
        with store.write() as w:
            w.snapshot(topology)
            assert w.add_change(LinkState("sr-c", "sr-d", False)) == 1

    sqlite = Store(env.tmp / "parity.sqlite3", "a")
    pg = PgStore(postgres_url, "a")
    try:
        write(sqlite)
        write(pg)
        one, two = sqlite.load(), pg.load()
        assert one.generation
        assert two.generation
        assert dataclasses.replace(one, generation="") == dataclasses.replace(two, generation="")
        assert two.tables == {"sr-a": (4, "d4"), "sr-b": (1, "d1")}
        assert [d.tenant for d in two.delegations] == ["globex"]
    finally:
        sqlite.close()
        pg.close()


def test_open_pce_store_picks_by_url(postgres_url: str, tmp_path: Path) -> None:
    pg = open_pce_store(postgres_url, "a")
    sqlite = open_pce_store(tmp_path / "p.sqlite3", "a")
    also = open_pce_store(f"sqlite:///{tmp_path / 'q.sqlite3'}", "a")
    try:
        assert isinstance(pg, PgStore)
        assert "flame@" in str(pg.path)
        assert type(sqlite) is Store
        assert also.path == tmp_path / "q.sqlite3"
    finally:
        for store in (pg, sqlite, also):
            store.close()
    with pytest.raises(Exception, match="unsupported PCE database"):
        open_pce_store("mysql://x@y/z")
    secret = postgres_url.replace("flame@", "flame:hunter2@")
    with pytest.raises(ConfigError, match="cannot reach the PCE database") as info:
        PgStore(secret.rsplit(":", 1)[0] + ":1/nothing")
    assert "hunter2" not in info.value.message


@contextlib.asynccontextmanager
async def service(
    env: Env, url: str, holder: str
) -> AsyncIterator[tuple[PceService, httpx.AsyncClient]]:
    store = PgStore(url, holder, lease_ttl=1.0)
    pce = PceService(load_topology(env.topology_path), store, renew_every=0.1)
    app = create_app(pce, env.tokens)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://pce") as http,
        ):
            yield pce, http
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_standby_service_takes_over_at_the_same_versions(
    postgres_url: str, env: Env
) -> None:
    ops = bearer(env.operator)
    async with service(env, postgres_url, "alpha") as (alpha, a_http):
        assert alpha.role is PceRole.ACTIVE
        body = {k: v for k, v in x_endpoint().to_dict().items() if v is not None}
        assert (await a_http.post("/v1/registrations", json=body, headers=ops)).status_code == 201
        r = await a_http.post("/v1/topology/links/sr-d/sr-e/down", headers=ops)
        assert r.status_code == 200, r.text
        tables = {sr: (await a_http.get(f"/v1/tables/{sr}", headers=ops)).json() for sr in SRS}
        async with service(env, postgres_url, "beta") as (beta, b_http):
            assert beta.role is PceRole.STANDBY
            assert (await b_http.get("/v1/tables/sr-a", headers=ops)).status_code == 503
            # Alpha's session ends as a killed process's would (no release).
            alpha._store.close()
            alpha._store.url = "postgresql://flame@127.0.0.1:1/gone"  # type: ignore[attr-defined]
            await eventually_async(lambda: beta.role is PceRole.ACTIVE, what="beta to take over")
            for sr in SRS:
                got = (await b_http.get(f"/v1/tables/{sr}", headers=ops)).json()
                assert got == tables[sr]  # the same routes at the same versions
            # Alpha finds out it lost the lease and steps down.
            await eventually_async(
                lambda: alpha.role is not PceRole.ACTIVE, what="alpha to step down"
            )
            r = await b_http.post("/v1/topology/links/sr-d/sr-e/up", headers=ops)
            assert r.status_code == 200, r.text
            after = (await b_http.get("/v1/tables/sr-e", headers=ops)).json()
            assert after["version"] == tables["sr-e"]["version"] + 1  # versions keep growing
