"""Fixtures: our store loaded with the dataset, and a real InfluxDB 1.6 with the same data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flame.clmc import lineproto
from flame.clmc.store.duckdb_store import DuckDBStore

from .dataset import DB, body


def load(store: DuckDBStore, db: str, data: bytes, rp: str = "autogen") -> None:
    if db not in store.databases():
        store.create_database(db)
    parsed = lineproto.parse(data)
    assert not parsed.errors, parsed.influx_error()
    for batch in parsed.batches:
        store.append(db, rp, batch.measurement, batch.table)


@pytest.fixture
def store() -> Iterator[DuckDBStore]:
    st = DuckDBStore()
    yield st
    st.close()


@pytest.fixture(scope="session")
def compat_store() -> Iterator[DuckDBStore]:
    st = DuckDBStore()
    load(st, DB, body())
    yield st
    st.close()


class Influx:
    """A client of the real influxd with the dataset loaded."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def query(self, q: str, db: str | None = DB, **extra: str) -> tuple[int, Any]:
        params = {"q": q, **extra}
        if db is not None:
            params["db"] = db
        r = self.http.post("/query", data=params)
        return r.status_code, r.json()

    def chunks(self, q: str, db: str = DB, **extra: str) -> list[Any]:
        r = self.http.post("/query", data={"q": q, "db": db, "chunked": "true", **extra})
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]

    def write(self, data: bytes, db: str = DB) -> None:
        r = self.http.post("/write", params={"db": db}, content=data)
        assert r.status_code == 204, r.text


@pytest.fixture(scope="session")
def influx(real_influx: str) -> Iterator[Influx]:
    """The shared real InfluxDB (tests/clmc/conftest.py) with the dataset in database DB."""
    client = Influx(real_influx)
    status, _ = client.query(f"CREATE DATABASE {DB}", db=None)
    assert status == 200
    client.write(body())
    yield client
    client.query(f"DROP DATABASE {DB}", db=None)
    client.http.close()
