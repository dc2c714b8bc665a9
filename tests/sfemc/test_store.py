"""The SFEMC store on SQLite (WAL) and on a real PostgreSQL server: the same behaviour."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame.common.errors import ConfigError
from flame.sfemc.lifecycle import LifecycleState, StaleState
from flame.sfemc.store import ABSENT, ServiceRecord, SfemcStore, open_store

from .helpers import spec

S = LifecycleState


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state" / "sfemc.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[SfemcStore]:
    s = open_store(url)
    yield s
    s.close()


def test_endpoint_round_trip_and_transition(store: SfemcStore, url: str) -> None:
    store.upsert_endpoint(spec(), "connected", 10.0)
    record = store.endpoint("svc-1.web.c1")
    assert record is not None
    assert record.spec == spec()
    assert record.desired == "connected"
    assert record.state is S.UNPLACED
    event = store.record_transition("svc-1.web.c1", S.UNPLACED, S.PLACING, None, 12.5)
    assert event.duration_s == 2.5
    assert event.to_state == "placing"
    with pytest.raises(StaleState):
        store.record_transition("svc-1.web.c1", S.UNPLACED, S.PLACING, None, 13.0)
    # Survives reopening: the state is in the database, not the object.
    store.close()
    again = open_store(url)
    try:
        record = again.endpoint("svc-1.web.c1")
        assert record is not None
        assert record.state is S.PLACING
        assert record.since == 12.5
        assert [t.event.to_state for t in again.history(sfe="svc-1.web.c1")] == ["placing"]
    finally:
        again.close()


def test_upsert_keeps_state_and_changes_spec_and_desired(store: SfemcStore) -> None:
    store.upsert_endpoint(spec(), "connected", 1.0)
    store.record_transition("svc-1.web.c1", S.UNPLACED, S.PLACING, None, 2.0)
    store.upsert_endpoint(spec(image="sha256:" + "b" * 64), "booted", 3.0)
    record = store.endpoint("svc-1.web.c1")
    assert record is not None
    assert record.state is S.PLACING
    assert record.desired == "booted"
    assert record.spec.image.endswith("b" * 64)


def test_forget_only_unplaced_and_absent(store: SfemcStore) -> None:
    store.upsert_endpoint(spec(), "connected", 1.0)
    assert not store.forget_endpoint("svc-1.web.c1")  # still desired
    assert store.set_desired("svc-1.web.c1", ABSENT)
    assert store.forget_endpoint("svc-1.web.c1")
    assert store.endpoint("svc-1.web.c1") is None
    assert not store.set_desired("svc-1.web.c1", "connected")


def test_services_alerts_and_policy_clocks(store: SfemcStore) -> None:
    svc = ServiceRecord("svc", "acme", "svc-1", {"sfc": "svc"}, {"t.yaml": "x: 1"}, 1, 5.0)
    store.put_service(svc)
    store.put_service(
        ServiceRecord("svc", "acme", "svc-1", {"sfc": "svc"}, {"t.yaml": "x: 2"}, 2, 6.0)
    )
    got = store.service("svc")
    assert got is not None
    assert got.generation == 2
    assert got.template == {"t.yaml": "x: 2"}
    assert [s.sfc for s in store.services()] == ["svc"]
    assert store.record_alert("ev-1", "svc", "slow", 1.0, "applied", "r", 2.0)
    assert not store.record_alert("ev-1", "svc", "slow", 1.0, "applied", "r", 2.0)
    assert store.alert_seen("ev-1")
    assert not store.alert_seen("ev-2")
    assert store.policy_clock("svc", "p/t") is None
    store.set_policy_clock("svc", "p/t", 7.0)
    store.set_policy_clock("svc", "p/t", 8.0)
    assert store.policy_clock("svc", "p/t") == 8.0
    store.clear_policy_clocks("svc")
    assert store.policy_clock("svc", "p/t") is None
    store.delete_service("svc")
    assert store.service("svc") is None


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    open_store(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_bad_urls_say_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="use a file path, sqlite:///PATH or postgresql://"):
        open_store("http://example/db")
    with pytest.raises(
        ConfigError,
        match=r"cannot connect to the SFEMC database postgresql://u:\*\*\*@127.0.0.1:1/x",
    ):
        open_store("postgresql://u:secret@127.0.0.1:1/x")
