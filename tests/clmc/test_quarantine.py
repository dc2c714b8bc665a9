"""WAL records the store refuses are set aside, never lost silently, and a replay can never
crash-loop (issue 12, item 1): the refused rows land in `<wal>/quarantine/` (Arrow IPC, with an
index), are logged and counted (`Ingest.stats()`, `/health`); a record that killed the process
twice while being replayed is quarantined at the next start without being applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from flame.clmc.api import create_app
from flame.clmc.ingest import Ingest
from flame.clmc.limits import Limits
from flame.clmc.store.base import table_name
from flame.clmc.store.duckdb_store import DuckDBStore


class Died(BaseException):
    """Stands for the process dying (OOM kill) in the middle of an apply."""


def _open(tmp_path: Path, **kw: Any) -> Ingest:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", **kw)
    if "db" not in store.databases():
        store.create_database("db")
    return ing


def count(ing: Ingest, m: str) -> int:
    assert ing.wait_applied(10)
    t = table_name("db", "autogen", m)
    if ing.store.schema("db", "autogen", m) is None:
        return 0
    return int(ing.store.query(f"SELECT count(*) AS n FROM {t}").to_pylist()[0]["n"])


def quarantined(ing: Ingest) -> list[dict[str, Any]]:
    index = ing.quarantine_dir / "index.jsonl"
    if not index.exists():
        return []
    return [json.loads(line) for line in index.read_text().splitlines()]


def _refuse(store: DuckDBStore, measurement: str, exc: BaseException) -> None:
    """Make the store fail every apply of `measurement`."""
    original = store.append_many

    def append_many(items: Any, meta: Any = None) -> None:
        if any(m == measurement for _, _, m, _ in items):
            raise exc
        original(items, meta)

    store.append_many = append_many  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_rows_the_store_refuses_are_quarantined_and_reported(tmp_path: Path) -> None:
    ing = _open(tmp_path)
    ing.start()
    _refuse(ing.store, "poison", RuntimeError("the store says no"))  # type: ignore[arg-type]
    try:
        with ing.paused():  # both land in one apply batch
            assert ing.write("db", None, b"poison,t=a v=1 1\npoison,t=a v=2 2").error() is None
            assert ing.write("db", None, b"fine v=1 1").error() is None
        assert count(ing, "fine") == 1
        assert count(ing, "poison") == 0
        (entry,) = quarantined(ing)
        assert entry["measurement"] == "poison"
        assert entry["rows"] == 2
        assert "the store says no" in entry["reason"]
        table = pa.ipc.open_stream(pa.OSFile(str(ing.quarantine_dir / entry["file"]))).read_all()
        assert table.column("v").to_pylist() == [1.0, 2.0]
        assert ing.stats()["quarantined"] == 1
        app = create_app(ing)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://c"
        ) as c:
            health = (await c.get("/health")).json()
        assert health["ingest"]["quarantined"] == 1
    finally:
        ing.stop()
        ing.store.close()


def test_a_record_that_kills_the_replay_twice_is_quarantined_not_retried(tmp_path: Path) -> None:
    ing = _open(tmp_path)
    ing.start()
    with ing.paused():
        assert ing.write("db", None, b"poison v=1 1").error() is None
        assert ing.write("db", None, b"fine v=1 1").error() is None
        ing.stop(drain=False)  # acknowledged, not applied (as after kill -9)
    ing.store.close()
    for attempt in (1, 2):  # the replay dies on the poison record, twice
        ing = _open(tmp_path)
        _refuse(ing.store, "poison", Died())  # type: ignore[arg-type]
        with pytest.raises(Died):
            ing.start()
        marker = json.loads((tmp_path / "wal" / "replaying.json").read_text())
        assert marker["attempts"] == attempt
        ing.stop()  # (closes the log file a dead process would have left open)
        ing.store.close()
    ing = _open(tmp_path)  # the third start sets it aside and carries on
    try:
        assert ing.start() == 1
        assert count(ing, "fine") == 1
        assert count(ing, "poison") == 0
        (entry,) = quarantined(ing)
        assert entry["measurement"] == "poison"
        assert "died" in entry["reason"]
        assert not (tmp_path / "wal" / "replaying.json").exists()
    finally:
        ing.stop()
        ing.store.close()
    ing = _open(tmp_path)  # and the next start has nothing left to replay
    try:
        assert ing.start() == 0
        assert count(ing, "fine") == 1
    finally:
        ing.stop()
        ing.store.close()


def test_an_old_record_over_todays_limits_is_quarantined_at_replay(tmp_path: Path) -> None:
    ing = _open(tmp_path, limits=Limits(max_fields_per_point=0, max_fields_per_measurement=0))
    ing.start()
    wide = b"wide " + b",".join(b"f%d=1" % i for i in range(3000)) + b" 1"
    with ing.paused():
        assert ing.write("db", None, wide).error() is None
        assert ing.write("db", None, b"fine v=1 1").error() is None
        ing.stop(drain=False)
    ing.store.close()
    ing = _open(tmp_path, limits=Limits())  # a newer version with limits replays it
    try:
        ing.start()
        assert count(ing, "fine") == 1
        assert ing.store.schema("db", "autogen", "wide") is None
        (entry,) = quarantined(ing)
        assert entry["measurement"] == "wide"
        assert "over the limits" in entry["reason"]
    finally:
        ing.stop()
        ing.store.close()
