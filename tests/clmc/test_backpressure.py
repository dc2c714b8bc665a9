"""Back-pressure before latency explodes, and queries that do not wait for the write backlog
(issue 12, item 3): a write is refused with 503 + Retry-After when the backlog would take too
long to apply or every parse slot stays busy; a query runs on what is applied unless it asks
for `read_your_writes`, or the backlog is small enough to wait for."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.clmc import ingest as ingest_module
from flame.clmc.api import create_app
from flame.clmc.errors import Overloaded
from flame.clmc.ingest import Ingest
from flame.clmc.store.duckdb_store import DuckDBStore


def _open(tmp_path: Path, **kw: Any) -> Ingest:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", **kw)
    ing.start()
    store.create_database("db")
    return ing


def body(n: int, t0: int = 0) -> bytes:
    return "\n".join(f"m,h=h{i % 10} v={i} {t0 + i}" for i in range(n)).encode()


def test_a_backlog_too_long_to_apply_is_refused_with_retry_after(tmp_path: Path) -> None:
    ing = _open(tmp_path, max_lag_s=1.0)
    try:
        ing._rate = 1000.0  # as measured on a slow store: 1,000 points/s
        with ing.paused():
            assert ing.write("db", None, body(900)).error() is None
            assert ing.write("db", None, body(900, 1000)).error() is None  # 1.8 s of backlog
            with pytest.raises(Overloaded) as exc:
                ing.write("db", None, body(10, 5000))
            assert exc.value.http_status == 503
            assert exc.value.retry_after_s >= 1
            assert "would take" in exc.value.message
        assert ing.wait_applied(10)
        assert ing.write("db", None, body(10, 5000)).error() is None  # drained: accepted
    finally:
        ing.stop()
        ing.store.close()


def test_busy_parse_slots_refuse_rather_than_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ing = _open(tmp_path, parse_slots=1, slot_wait_s=0.05)
    release, parsing = threading.Event(), threading.Event()
    real_parse = ingest_module.parse

    def slow_parse(*args: Any, **kw: Any) -> Any:
        parsing.set()
        release.wait(60)
        return real_parse(*args, **kw)

    monkeypatch.setattr(ingest_module, "parse", slow_parse)
    try:
        first = threading.Thread(target=ing.write, args=("db", None, body(5)))
        first.start()
        assert parsing.wait(60)  # the first write holds the only parse slot
        with pytest.raises(Overloaded, match="parsed"):
            ing.write("db", None, body(5, 100))
        release.set()
        first.join()
    finally:
        release.set()
        ing.stop()
        ing.store.close()


@pytest.mark.asyncio
async def test_queries_do_not_wait_for_a_backlog_unless_asked(tmp_path: Path) -> None:
    # settle_s far above the bound below: a query that waited would take 30 s, not a stall's 1-2 s
    ing = _open(tmp_path, settle_rows=100, settle_s=30.0)
    app = create_app(ing)
    q = {"db": "db", "q": "SELECT count(v) FROM m"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://c"
        ) as c:
            assert (
                await c.post("/write", params={"db": "db"}, content=body(50))
            ).status_code == 204
            # a small backlog: waited for, so a quiet client reads its own writes
            r = await c.get("/query", params=q)
            assert r.json()["results"][0]["series"][0]["values"][0][1] == 50
            with ing.paused():  # a storm's backlog: applying is behind
                r = await c.post("/write", params={"db": "db"}, content=body(500, 1000))
                assert r.status_code == 204
                started = time.monotonic()
                r = await c.get("/query", params=q)
                assert time.monotonic() - started < 10.0  # did not wait settle_s (30 s)
                assert r.json()["results"][0]["series"][0]["values"][0][1] == 50  # missed them
                threading.Timer(0.3, ing._running.set).start()  # applying resumes soon
                r = await c.get("/query", params={**q, "read_your_writes": "true"})
                assert r.json()["results"][0]["series"][0]["values"][0][1] == 550
    finally:
        ing.stop()
        ing.store.close()


def test_health_reports_the_backlog(tmp_path: Path) -> None:
    ing = _open(tmp_path)
    try:
        with ing.paused():
            ing.write("db", None, body(100))
            stats = ing.stats()
            assert stats["backlog_points"] == 100
            assert float(stats["apply_lag_s"]) > 0  # type: ignore[arg-type]
        assert ing.wait_applied(10)
        assert ing.stats()["backlog_points"] == 0
    finally:
        ing.stop()
        ing.store.close()
