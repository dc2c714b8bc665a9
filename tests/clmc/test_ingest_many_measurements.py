"""Ingest of bodies with many measurements (issue 12, item 3; CLMC-8): the series and tag
values of every measurement of a write are admitted in one pass (`SeriesIndex.admit_many`), with
the same decisions as a plain model of the limits taking one measurement after the other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.clmc.ingest import Ingest
from flame.clmc.limits import Limits
from flame.clmc.store._series import SeriesIndex, series_ids
from flame.clmc.store.duckdb_store import DuckDBStore

_KEYS = ["host", "cpu", "region"]
_VALUES = ["a", "b", "c", "d", "e"]

Row = dict[str, str | None]
Batch = tuple[str, list[str], list[Row]]  # measurement, its tag keys, rows


@st.composite
def _batch(draw: st.DrawFn) -> Batch:
    measurement = draw(st.sampled_from(["cpu", "mem", "disk", "net"]))
    keys = draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3, unique=True))
    value = st.one_of(st.none(), st.sampled_from(_VALUES))
    rows = draw(st.lists(st.fixed_dictionaries({k: value for k in keys}), min_size=1, max_size=8))
    return measurement, keys, rows


def _unique_measurements(batches: list[Batch]) -> list[Batch]:
    out: dict[str, Batch] = {}
    for b in batches:
        out.setdefault(b[0], b)
    return list(out.values())


class _Model:
    """The limits, one measurement after the other, in plain Python."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.values: dict[tuple[str, str], list[str]] = {}
        self.series: dict[str, set[frozenset[tuple[str, str]]]] = {}
        self.count = 0

    def admit(self, measurement: str, keys: list[str], rows: list[Row]) -> list[bool]:
        keep = [True] * len(rows)
        for k in keys:
            known = self.values.setdefault((measurement, k), [])
            fresh: list[str] = []
            for r in rows:
                v = r[k]
                if v is not None and v not in known and v not in fresh:
                    fresh.append(v)
            limit = self.limits.max_values_per_tag
            room = len(fresh) if limit <= 0 else max(0, limit - len(known))
            refused = set(fresh[room:])
            keep = [ok and r[k] not in refused for ok, r in zip(keep, rows, strict=True)]
            known.extend(fresh[:room])
        have = self.series.setdefault(measurement, set())
        sets = [frozenset((k, v) for k, v in r.items() if v is not None) for r in rows]
        fresh_series: list[frozenset[tuple[str, str]]] = []
        for ok, s in zip(keep, sets, strict=True):
            if ok and s not in have and s not in fresh_series:
                fresh_series.append(s)
        room = max(0, self.limits.max_series_per_database - self.count)
        refused_series = set(fresh_series[room:])
        have.update(fresh_series[:room])
        self.count += min(room, len(fresh_series))
        return [ok and s not in refused_series for ok, s in zip(keep, sets, strict=True)]


def _table(keys: list[str], rows: list[Row]) -> pa.Table:
    return pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in keys})


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.lists(_batch(), min_size=1, max_size=4), min_size=1, max_size=3),
    max_values=st.integers(0, 4),
    max_series=st.integers(1, 12),
)
def test_clmc8_admit_many_decides_as_one_measurement_after_the_other(
    writes: list[list[Batch]], max_values: int, max_series: int
) -> None:
    """Every write's measurements admitted together keep exactly the rows the model keeps
    (tag values over max-values-per-tag first, then series over max-series-per-database, the
    first to appear getting in), and their series ids are those of the tags."""
    limits = Limits(max_values_per_tag=max_values, max_series_per_database=max_series)
    index = SeriesIndex(lambda key: None, lambda db: [])
    model = _Model(limits)
    for write in writes:
        batches = _unique_measurements(write)  # a body holds one batch per measurement
        tables = [(m, _table(keys, rows)) for m, keys, rows in batches]
        tagged = [(m, t, [(k, t.column(k)) for k in t.column_names]) for m, t in tables]
        admissions = index.admit_many("db", "autogen", tagged, limits)
        for (m, keys, rows), (_, t, tags), adm in zip(batches, tagged, admissions, strict=True):
            assert adm.keep.tolist() == model.admit(m, keys, rows)
            assert adm.sids is not None
            assert np.array_equal(adm.sids, series_ids(t.num_rows, tags))
            for mask, reason in adm.refused:
                assert mask.any()
                assert reason.startswith(("max-values-per-tag", "max-series-per-database"))
    assert index.series_count("db") == model.count


def _table_of(store: DuckDBStore, measurement: str) -> str:
    schema = store.schema("db", "autogen", measurement)
    assert schema is not None, measurement
    return schema.table


def _body(measurements: int, hosts: int, t: int, extra: str = "") -> bytes:
    lines = [
        f"m{i},host=h{h}{extra} v={i + h}.5,n={h}i {t + h}"
        for i in range(measurements)
        for h in range(hosts)
    ]
    return "\n".join(lines).encode()


def test_clmc8_a_body_of_200_measurements_is_stored_once_and_refused_in_part(
    tmp_path: Path,
) -> None:
    """200 measurements in one body: all stored; the same body again (a client's retry)
    overwrites (last write wins, no duplicates); a new tag value over the limit in every
    measurement is refused line by line, in InfluxDB's words, and the rest stored."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", limits=Limits(max_values_per_tag=3))
    ing.start()
    try:
        store.create_database("db")
        body = _body(200, 3, 1_000)
        assert ing.write("db", None, body).error() is None
        assert ing.write("db", None, body).error() is None
        assert ing.wait_applied(30)
        for m in ("m0", "m57", "m199"):
            assert (
                store.query(f"SELECT count(*) FROM {_table_of(store, m)}").column(0)[0].as_py() == 3
            )
        more = _body(200, 4, 2_000)  # host h3: a fourth value of `host` in each measurement
        outcome = ing.write("db", None, more)
        assert outcome.points == 600
        assert outcome.error() == (
            'partial write: max-values-per-tag limit exceeded (3/3): measurement="m0" '
            'tag="host" value="h3" dropped=200'
        )
        assert outcome.error_line() == 4
        assert ing.wait_applied(30)
        total = sum(
            store.query(f"SELECT count(*) FROM {_table_of(store, f'm{i}')}").column(0)[0].as_py()
            for i in range(200)
        )
        assert total == 200 * 3 * 2
    finally:
        ing.stop()
        store.close()
