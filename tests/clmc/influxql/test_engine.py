"""Feature tests of the engine with expected InfluxDB result bodies (no influxd needed)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from flame.clmc.influxql import ParseError, execute, execute_chunked
from flame.clmc.store.duckdb_store import DuckDBStore

from .conftest import load

DATA = b"""cpu,host=a,region=eu value=1,n=10i 1767225600000000000
cpu,host=b,region=us value=2,n=20i 1767225600000000000
cpu,host=a,region=eu value=3,n=30i 1767225610000000000
cpu,host=b value=4,n=40i,s="x" 1767225625000000000
cpu,host=a,region=eu value=5,n=50i 1767225660000000000
mem,host=a free=100i 1767225600500000000
mem,host=a free=110i 1767225605000000000
"""
W = "time >= '2026-01-01T00:00:00Z' AND time < '2026-01-01T00:01:05Z'"


@pytest.fixture
def db(store: DuckDBStore) -> DuckDBStore:
    load(store, "t", DATA)
    return store


def q(store: Any, text: str, **kw: Any) -> Any:
    return execute(
        store, text, kw.pop("db", "t"), kw.pop("epoch", None), kw.pop("params", {}), **kw
    )


def series(body: Any, i: int = 0) -> Any:
    return body["results"][i].get("series")


def values(body: Any, i: int = 0) -> list[list[Any]]:
    return [v for s in series(body, i) for v in s["values"]]


def test_raw_select_body(db: DuckDBStore) -> None:
    assert q(db, "SELECT value, s FROM cpu WHERE host = 'b'") == {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "cpu",
                        "columns": ["time", "value", "s"],
                        "values": [
                            ["2026-01-01T00:00:00Z", 2.0, None],
                            ["2026-01-01T00:00:25Z", 4.0, "x"],
                        ],
                    }
                ],
            }
        ]
    }


def test_nanosecond_fractions_are_trimmed(db: DuckDBStore) -> None:
    assert values(q(db, "SELECT free FROM mem"))[0] == ["2026-01-01T00:00:00.5Z", 100]


@pytest.mark.parametrize(
    ("epoch", "first"),
    [("ns", 1767225600500000000), ("u", 1767225600500000), ("µ", 1767225600500000),
     ("ms", 1767225600500), ("s", 1767225600), ("m", 29453760), ("h", 490896)],
)  # fmt: skip
def test_epoch_units(db: DuckDBStore, epoch: str, first: int) -> None:
    assert values(q(db, "SELECT free FROM mem", epoch=epoch))[0][0] == first


def test_empty_result_is_just_the_statement_id(db: DuckDBStore) -> None:
    assert q(db, "SELECT value FROM cpu WHERE host = 'zzz'") == {"results": [{"statement_id": 0}]}
    assert q(db, "SELECT value FROM nothing") == {"results": [{"statement_id": 0}]}


def test_errors_inside_the_body_and_following_statements_run(db: DuckDBStore) -> None:
    body = q(
        db, "SELECT value FROM cpu LIMIT 1; SELECT mean(value), value FROM cpu; SHOW DATABASES"
    )
    assert body["results"][0]["series"][0]["values"] == [["2026-01-01T00:00:00Z", 1.0]]
    assert body["results"][1] == {
        "statement_id": 1,
        "error": "mixing aggregate and non-aggregate queries is not supported",
    }
    assert body["results"][2]["series"][0]["values"] == [["t"]]
    assert (
        q(db, "SELECT value FROM cpu", db="nope")["results"][0]["error"]
        == "database not found: nope"
    )
    assert (
        q(db, "SELECT value FROM cpu", db=None)["results"][0]["error"] == "database name required"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "SELECT FROM cpu",
            "error parsing query: found FROM, expected identifier, string, number, bool at line 1, char 8",
        ),
        (
            "SELECT value\nFROM cpu WHERE",
            "error parsing query: found EOF, expected identifier, string, number, bool at line 2, char 16",
        ),
        (
            "SELEC x",
            "error parsing query: found SELEC, expected SELECT, DELETE, SHOW, CREATE, DROP, EXPLAIN, GRANT, REVOKE, ALTER, SET, KILL at line 1, char 1",
        ),
        ("SELECT a FROM b WHERE c = $x", "error parsing query: missing parameter: x"),
        (
            "SELECT a FROM b GROUP BY time(1m) fill(x)",
            "error parsing query: expected number argument in fill()",
        ),
    ],
)
def test_parse_errors_raise_with_position(db: DuckDBStore, text: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        q(db, text)
    assert info.value.influx_body() == {"error": message}
    assert info.value.http_status == 400


def test_bound_parameters_are_values_not_text(db: DuckDBStore) -> None:
    body = q(db, "SELECT value FROM cpu WHERE host = $h AND value > $v", params={"h": "a", "v": 2})
    assert values(body) == [["2026-01-01T00:00:10Z", 3.0], ["2026-01-01T00:01:00Z", 5.0]]
    hostile = q(db, "SELECT value FROM cpu WHERE host = $h", params={"h": "a' OR '1'='1"})
    assert hostile == {"results": [{"statement_id": 0}]}
    assert values(
        q(db, "SELECT value FROM cpu WHERE host =~ $r", params={"r": {"regex": "^b$"}})
    ) == [
        ["2026-01-01T00:00:00Z", 2.0],
        ["2026-01-01T00:00:25Z", 4.0],
    ]


def test_group_by_time_fills_every_window_of_the_range(db: DuckDBStore) -> None:
    base = f"SELECT mean(value), count(value) FROM cpu WHERE {W} GROUP BY time(20s)"
    expect = {
        "": [[2.0, 3], [4.0, 1], [None, 0], [5.0, 1]],
        " fill(none)": [[2.0, 3], [4.0, 1], [5.0, 1]],
        " fill(previous)": [[2.0, 3], [4.0, 1], [4.0, 1], [5.0, 1]],
        " fill(linear)": [[2.0, 3], [4.0, 1], [4.5, 1], [5.0, 1]],
        " fill(7)": [[2.0, 3], [4.0, 1], [7, 7], [5.0, 1]],
    }
    for fill, rows in expect.items():
        got = values(q(db, base + fill))
        assert [r[1:] for r in got] == rows, fill


def test_group_by_time_offset_and_tags(db: DuckDBStore) -> None:
    body = q(db, f"SELECT sum(n) FROM cpu WHERE {W} GROUP BY time(20s, 5s), host fill(none)")
    assert [(s["tags"], s["values"]) for s in series(body)] == [
        (
            {"host": "a"},
            [
                ["2025-12-31T23:59:45Z", 10],
                ["2026-01-01T00:00:05Z", 30],
                ["2026-01-01T00:00:45Z", 50],
            ],
        ),
        ({"host": "b"}, [["2025-12-31T23:59:45Z", 20], ["2026-01-01T00:00:25Z", 40]]),
    ]


def test_selector_time_and_aggregate_time(db: DuckDBStore) -> None:
    assert values(q(db, "SELECT max(value) FROM cpu")) == [["2026-01-01T00:01:00Z", 5.0]]
    assert values(q(db, "SELECT max(value), min(value) FROM cpu")) == [
        ["1970-01-01T00:00:00Z", 5.0, 1.0]
    ]
    assert values(q(db, f"SELECT mean(value) FROM cpu WHERE {W}")) == [
        ["2026-01-01T00:00:00Z", 3.0]
    ]
    # ties on time: first() takes the greater value, as InfluxDB
    assert values(q(db, "SELECT first(value) FROM cpu")) == [["2026-01-01T00:00:00Z", 2.0]]


def test_aggregate_functions(db: DuckDBStore) -> None:
    body = q(db, "SELECT count(n), sum(n), mean(n), median(n), spread(n), stddev(n), percentile(n, 40), "
                 "percentile(n, 0), first(s), last(n), count(distinct(host)) FROM cpu")  # fmt: skip
    assert series(body)[0]["columns"] == ["time", "count", "sum", "mean", "median", "spread", "stddev",
                                          "percentile", "percentile_1", "first", "last", "count_1"]  # fmt: skip
    assert values(body) == [
        [
            "1970-01-01T00:00:00Z",
            5,
            150,
            30.0,
            30.0,
            40,
            pytest.approx(15.8113883),
            20,
            None,
            "x",
            50,
            None,
        ]
    ]


def test_arithmetic_and_names(db: DuckDBStore) -> None:
    body = q(db, "SELECT value * 2, value + n, n / 4, value AS v FROM cpu WHERE host = 'a' LIMIT 1")
    assert series(body)[0]["columns"] == ["time", "value", "value_n", "n", "v"]
    assert values(body) == [["2026-01-01T00:00:00Z", 2.0, 11.0, 2.5, 1.0]]
    body = q(db, "SELECT (max(n) - min(n)) / count(n) AS r, mean(value) + 1 FROM cpu")
    assert values(body) == [["1970-01-01T00:00:00Z", 8.0, 4.0]]


def test_select_star_and_group_by_star(db: DuckDBStore) -> None:
    body = q(db, "SELECT * FROM cpu WHERE host = 'b'")
    assert series(body)[0]["columns"] == ["time", "host", "n", "region", "s", "value"]
    body = q(db, "SELECT * FROM cpu GROUP BY * LIMIT 1")
    assert [s["tags"] for s in series(body)] == [
        {"host": "a", "region": "eu"},
        {"host": "b", "region": ""},
        {"host": "b", "region": "us"},
    ]
    assert series(body)[0]["columns"] == ["time", "n", "s", "value"]


def test_tag_conditions_treat_missing_tags_as_empty(db: DuckDBStore) -> None:
    assert values(q(db, "SELECT value FROM cpu WHERE region = ''")) == [
        ["2026-01-01T00:00:25Z", 4.0]
    ]
    assert len(values(q(db, "SELECT value FROM cpu WHERE region != 'eu'"))) == 2
    assert len(values(q(db, "SELECT value FROM cpu WHERE region !~ /e/ OR value > 4"))) == 3
    assert q(db, "SELECT value FROM cpu WHERE value = 'x'") == {"results": [{"statement_id": 0}]}


def test_time_conditions(db: DuckDBStore) -> None:
    now = 1767225600000000000 + 30 * 10**9
    body = execute(db, "SELECT value FROM cpu WHERE time > now() - 20s", "t", None, {}, now_ns=now)
    assert values(body) == [["2026-01-01T00:00:25Z", 4.0], ["2026-01-01T00:01:00Z", 5.0]]
    assert (
        len(
            values(
                q(db, "SELECT value FROM cpu WHERE time >= 1767225610s AND time <= 1767225625000ms")
            )
        )
        == 2
    )
    assert q(db, "SELECT value FROM cpu WHERE time = 'yesterday'")["results"][0][
        "error"
    ].startswith("invalid time literal")


def test_limits_per_series_and_slimit(db: DuckDBStore) -> None:
    body = q(db, "SELECT value FROM cpu GROUP BY host ORDER BY time DESC LIMIT 1 OFFSET 1")
    assert [(s["tags"], s["values"]) for s in series(body)] == [
        ({"host": "a"}, [["2026-01-01T00:00:10Z", 3.0]]),
        ({"host": "b"}, [["2026-01-01T00:00:00Z", 2.0]]),
    ]
    body = q(db, "SELECT max(value) FROM cpu GROUP BY host SLIMIT 1 SOFFSET 1")
    assert [s["tags"] for s in series(body)] == [{"host": "b"}]


def test_regex_and_qualified_sources(db: DuckDBStore) -> None:
    assert [s["name"] for s in series(q(db, "SELECT * FROM /^(cpu|mem)$/"))] == ["cpu", "mem"]
    assert values(q(db, 'SELECT free FROM "t"."autogen"."mem" LIMIT 1', db=None)) == [
        ["2026-01-01T00:00:00.5Z", 100]
    ]
    assert values(q(db, "SELECT free FROM t..mem LIMIT 1", db=None)) == [
        ["2026-01-01T00:00:00.5Z", 100]
    ]


def test_distinct_in_order_of_appearance(db: DuckDBStore) -> None:
    load(db, "t", b"d v=3i 1\nd v=1i 2\nd v=3i 3\nd v=2i 4\n")
    assert [r[1] for r in values(q(db, "SELECT distinct(v) FROM d"))] == [3, 1, 2]


def test_show_statements(db: DuckDBStore) -> None:
    assert values(q(db, "SHOW MEASUREMENTS")) == [["cpu"], ["mem"]]
    assert values(q(db, "SHOW MEASUREMENTS WITH MEASUREMENT =~ /^m/")) == [["mem"]]
    assert values(q(db, "SHOW TAG KEYS FROM cpu")) == [["host"], ["region"]]
    assert values(q(db, "SHOW TAG VALUES FROM cpu WITH KEY = region")) == [
        ["region", "eu"],
        ["region", "us"],
    ]
    assert values(q(db, "SHOW TAG VALUES WITH KEY IN (host) WHERE region = 'us'")) == [
        ["host", "b"]
    ]
    assert values(q(db, "SHOW FIELD KEYS FROM cpu")) == [
        ["n", "integer"],
        ["s", "string"],
        ["value", "float"],
    ]
    assert values(q(db, "SHOW SERIES WHERE host = 'a'")) == [
        ["cpu,host=a,region=eu"],
        ["mem,host=a"],
    ]
    assert series(q(db, "SHOW RETENTION POLICIES ON t"))[0]["values"] == [
        ["autogen", "0s", "168h0m0s", 1, True]
    ]


def test_create_rp_delete_and_drop(db: DuckDBStore) -> None:
    assert q(db, "CREATE RETENTION POLICY d2 ON t DURATION 2d REPLICATION 1")["results"] == [
        {"statement_id": 0}
    ]
    assert ["d2", "48h0m0s", "24h0m0s", 1, False] in series(q(db, "SHOW RETENTION POLICIES ON t"))[
        0
    ]["values"]
    q(db, "DELETE FROM cpu WHERE host = 'a' AND time <= '2026-01-01T00:00:10Z'")
    assert values(q(db, "SELECT value FROM cpu WHERE host = 'a'")) == [
        ["2026-01-01T00:01:00Z", 5.0]
    ]
    assert q(db, "DELETE FROM cpu WHERE value > 1")["results"][0]["error"].startswith(
        "fields not supported"
    )
    q(db, "DROP MEASUREMENT mem")
    assert values(q(db, "SHOW MEASUREMENTS")) == [["cpu"]]
    q(db, "CREATE DATABASE other; DROP DATABASE t")
    assert values(q(db, "SHOW DATABASES")) == [["other"]]


def test_chunked_bodies_are_flagged_partial(db: DuckDBStore) -> None:
    bodies: list[dict[str, Any]] = list(
        execute_chunked(
            db,
            "SELECT value FROM cpu GROUP BY host; SHOW MEASUREMENTS",
            "t",
            None,
            {},
            chunk_size=2,
        )
    )
    shape = [(b["results"][0]["statement_id"], b["results"][0].get("partial", False),
              [(s.get("tags"), len(s["values"]), s.get("partial", False)) for s in b["results"][0]["series"]])
             for b in bodies]  # fmt: skip
    assert shape == [
        (0, True, [({"host": "a"}, 2, True)]),
        (0, True, [({"host": "a"}, 1, False)]),
        (0, False, [({"host": "b"}, 2, False)]),
        (1, False, [(None, 2, False)]),
    ]


def test_chunked_raises_parse_errors_before_any_body(db: DuckDBStore) -> None:
    with pytest.raises(ParseError):
        execute_chunked(db, "SELECT FROM", "t", None, {})


class _CountingStore:
    """Wraps a store and records how many rows each SQL query returns to Python."""

    def __init__(self, inner: DuckDBStore) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def query(self, sql: str, params: Any = ()) -> pa.Table:
        table = self.inner.query(sql, params)
        self.rows.append(table.num_rows)
        return table


def test_aggregation_runs_in_sql_not_in_python(store: DuckDBStore) -> None:
    store.create_database("big")
    n = 200_000
    times = pa.array([1767225600000000000 + i * 10**9 for i in range(n)], pa.int64())
    batch = pa.table({"time": times, "host": pa.array([f"h{i % 4}" for i in range(n)]),
                      "v": pa.array([float(i % 97) for i in range(n)])})  # fmt: skip
    store.append("big", "autogen", "m", batch, tag_keys=["host"])
    counting = _CountingStore(store)
    body = execute(counting, "SELECT mean(v), percentile(v, 95) FROM m WHERE time >= '2026-01-01T00:00:00Z' "
                             "AND time < '2026-01-03T08:00:00Z' GROUP BY time(1h), host", "big", None, {})  # fmt: skip
    assert len(series(body)) == 4
    assert max(counting.rows) == 4 * 56  # windows x series, never the 200k points


def test_fields_beside_a_selector_come_from_its_point(db: DuckDBStore) -> None:
    assert values(q(db, "SELECT max(value), host, n * 2 FROM cpu")) == [
        ["2026-01-01T00:01:00Z", 5.0, "a", 100]
    ]
    assert series(q(db, "SELECT max(value), * FROM cpu"))[0]["columns"] == [
        "time",
        "max",
        "host",
        "n",
        "region",
        "s",
        "value",
    ]
    body = q(db, f"SELECT last(value), host FROM cpu WHERE {W} GROUP BY time(30s)")
    assert values(body) == [
        ["2026-01-01T00:00:00Z", 4.0, "b"],
        ["2026-01-01T00:00:30Z", None, None],
        ["2026-01-01T00:01:00Z", 5.0, "a"],
    ]
    assert values(q(db, "SELECT percentile(value, 50), host FROM cpu")) == [
        ["2026-01-01T00:00:10Z", 3.0, "a"]
    ]
    assert q(db, "SELECT mean(value), host FROM cpu")["results"][0]["error"] == (
        "mixing aggregate and non-aggregate queries is not supported"
    )


def test_time_formatting_matches_go_rfc3339nano() -> None:
    from flame.clmc.influxql.timefmt import format_rfc3339, format_times

    stamps = [0, 1, 1767225600500000000, 1767225600123456789, 1767225600000001000, -1_500_000_000]
    want = ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000001Z", "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00.000001Z", "1969-12-31T23:59:58.5Z"]  # fmt: skip
    assert format_times(pa.array(stamps, pa.int64()), None) == want
    assert [format_rfc3339(t) for t in stamps] == want


def test_time_under_or_bounds_the_query_as_influxdb(db: DuckDBStore) -> None:
    body = q(db, "SELECT value FROM cpu WHERE host = 'b' OR time > '2026-01-01T00:00:20Z'")
    assert values(body) == [["2026-01-01T00:00:25Z", 4.0]]
    assert (
        q(db, "SELECT * FROM t.nope.cpu")["results"][0]["error"]
        == "retention policy not found: nope"
    )


def test_a_store_failure_fails_only_its_statement(db: DuckDBStore) -> None:
    load(db, "t", b"big n=9223372036854775807i 1\nbig n=9223372036854775807i 2\n")
    body = q(db, "SELECT sum(n) FROM big; SELECT max(n) FROM big")
    assert body["results"][0]["error"].startswith("query failed: ")
    assert values(body, 1) == [["1970-01-01T00:00:00.000000001Z", 9223372036854775807]]


def test_transformations(db: DuckDBStore) -> None:
    # expected values are InfluxDB 1.6's on the same data
    assert values(q(db, "SELECT derivative(value) FROM cpu")) == [
        ["2026-01-01T00:00:10Z", 0.2],
        ["2026-01-01T00:00:25Z", pytest.approx(1 / 15)],
        ["2026-01-01T00:01:00Z", pytest.approx(1 / 35)],
    ]
    body = q(db, f"SELECT derivative(mean(value)) FROM cpu WHERE {W} GROUP BY time(20s)")
    assert values(body) == [["2026-01-01T00:00:20Z", 2.0], ["2026-01-01T00:01:00Z", 0.5]]
    assert [r[1] for r in values(q(db, "SELECT cumulative_sum(n) FROM cpu"))] == [
        10,
        30,
        60,
        100,
        150,
    ]
    assert [r[1] for r in values(q(db, "SELECT moving_average(n, 2) FROM cpu"))] == [
        15.0,
        25.0,
        35.0,
        45.0,
    ]
    assert [r[1] for r in values(q(db, "SELECT difference(n) FROM cpu"))] == [20, 10, 10]
    assert q(db, "SELECT non_negative_difference(n) FROM cpu ORDER BY time DESC") == {
        "results": [{"statement_id": 0}]
    }
    assert q(db, "SELECT derivative(mean(value)) FROM cpu")["results"][0]["error"] == (
        "derivative aggregate requires a GROUP BY interval"
    )


def test_division_by_zero_is_zero_as_influxdb(db: DuckDBStore) -> None:
    body = q(db, "SELECT value / 0, n / 0, n % 0, value % 0 FROM cpu LIMIT 1")
    assert values(body) == [["2026-01-01T00:00:00Z", 0.0, 0.0, 0, None]]


def test_top_and_bottom(db: DuckDBStore) -> None:
    # InfluxDB 1.6's answers on the same data
    assert values(q(db, "SELECT top(value, 2) FROM cpu")) == [
        ["2026-01-01T00:00:25Z", 4.0],
        ["2026-01-01T00:01:00Z", 5.0],
    ]
    assert values(q(db, "SELECT bottom(value, 2), host FROM cpu")) == [
        ["2026-01-01T00:00:00Z", 1.0, "a"],
        ["2026-01-01T00:00:00Z", 2.0, "b"],
    ]
    body = q(db, f"SELECT top(value, 2) FROM cpu WHERE {W} GROUP BY time(30s)")
    assert [r[1] for r in values(body)] == [3.0, 4.0, 5.0]
    assert [r[1] for r in values(q(db, "SELECT top(n, 10) FROM cpu"))] == [20, 10, 30, 40, 50]
    assert q(db, "SELECT top(value, 2), mean(value) FROM cpu")["results"][0]["error"] == (
        "selector function top() cannot be combined with other functions"
    )


def test_chunked_converts_one_chunk_at_a_time(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flame.clmc.influxql import rows as rows_module

    store.create_database("c")
    n = 5000
    times = pa.array([1767225600000000000 + i for i in range(n)], pa.int64())
    store.append(
        "c", "autogen", "m", pa.table({"time": times, "v": pa.array([float(i) for i in range(n)])})
    )
    sizes: list[int] = []
    real = rows_module.format_times

    def spy(col: Any, epoch: Any) -> list[object]:
        sizes.append(len(col))
        return real(col, epoch)

    monkeypatch.setattr(rows_module, "format_times", spy)
    bodies = execute_chunked(store, "SELECT v FROM m", "c", None, {}, chunk_size=1000)
    first: dict[str, Any] = next(bodies)
    assert sizes == [1000]
    assert first["results"][0]["partial"] is True
    rest: list[dict[str, Any]] = list(bodies)
    assert len(rest) == 4
    assert sizes == [1000] * 5
    assert "partial" not in rest[-1]["results"][0]


def test_too_many_windows_is_a_statement_error(db: DuckDBStore) -> None:
    load(db, "t", b"old v=1 1\n")
    error = q(db, "SELECT count(v) FROM old GROUP BY time(1s)")["results"][0]["error"]
    assert error.startswith("too many GROUP BY time windows")
    # fill(none) needs no grid of windows
    assert values(q(db, "SELECT count(v) FROM old GROUP BY time(1s) fill(none)")) == [
        ["1970-01-01T00:00:00Z", 1]
    ]


def test_drop_series(db: DuckDBStore) -> None:
    assert q(db, "DROP SERIES FROM cpu WHERE time > 0")["results"][0]["error"] == (
        "DROP SERIES doesn't support time in WHERE clause"
    )
    q(db, "DROP SERIES WHERE host = 'a'")
    assert values(q(db, "SHOW SERIES")) == [["cpu,host=b"], ["cpu,host=b,region=us"]]
