"""Differential tests: the same queries against the real InfluxDB 1.6 and our engine, on the
same data; result bodies must be equal (floats within 1e-9)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flame.clmc.influxql import ParseError, execute, execute_chunked

from .compare import same, ties_sorted
from .conftest import Influx, load
from .dataset import DB

W = "time >= '2026-01-01T00:00:00Z' AND time < '2026-01-01T00:10:00Z'"
W2 = "time >= '2026-01-01T00:01:03Z' AND time <= '2026-01-01T00:04:00Z'"

QUERIES: list[str] = [
    # raw selects
    "SELECT * FROM cpu",
    "SELECT usage FROM cpu",
    "SELECT usage, cores, state FROM cpu WHERE host = 'h2'",
    "SELECT * FROM cpu WHERE host = 'h1' LIMIT 5",
    "SELECT * FROM cpu WHERE host = 'h1' LIMIT 5 OFFSET 3",
    "SELECT usage FROM cpu ORDER BY time DESC LIMIT 7",
    "SELECT usage FROM cpu WHERE usage > 90",
    "SELECT usage FROM cpu WHERE usage > 50 AND (host = 'h1' OR host = 'h3')",
    "SELECT usage, host FROM cpu WHERE host =~ /h[12]/ AND usage < 10",
    "SELECT usage FROM cpu WHERE host !~ /h[12]/ AND usage <= 20",
    "SELECT usage FROM cpu WHERE host != 'h1' AND usage >= 95",
    "SELECT usage FROM cpu WHERE host <> 'h1' AND usage >= 95",
    "SELECT usage FROM cpu WHERE region = '' LIMIT 4",
    "SELECT usage FROM cpu WHERE region != 'eu' AND cores > 14",
    "SELECT state FROM cpu WHERE state = 'busy'",
    "SELECT state, usage FROM cpu WHERE state =~ /^d/",
    "SELECT ok, usage FROM cpu WHERE ok = true",
    "SELECT usage FROM cpu WHERE usage = 'x'",
    "SELECT usage * 2, usage + cores, cores / 3, cores % 5, usage - 1.5 FROM cpu WHERE host = 'h1' LIMIT 5",
    "SELECT usage AS u, cores AS c FROM cpu WHERE host = 'h3' LIMIT 3",
    "SELECT usage, usage FROM cpu LIMIT 2",
    "SELECT * FROM /^(mem|net)$/",
    "SELECT * FROM iqlcompat.autogen.mem WHERE host = 'h2' LIMIT 3",
    "SELECT * FROM iqlcompat..net LIMIT 3",
    'SELECT "free" FROM "mem" WHERE "host" = \'h3\' LIMIT 3',
    "SELECT usage FROM cpu WHERE time > '2026-01-01T00:05:00Z' AND time < '2026-01-01T00:05:30Z'",
    "SELECT usage FROM cpu WHERE time >= 1767225900000000000 AND time <= 1767225930000000000",
    "SELECT usage FROM cpu WHERE time >= 1767225900s AND time < 1767225920s",
    "SELECT usage FROM cpu WHERE time > now() - 3650d AND host = 'h1' LIMIT 3",
    "SELECT * FROM disk",
    "SELECT used FROM disk GROUP BY host",
    "SELECT * FROM cpu WHERE host = 'h2' GROUP BY region LIMIT 2",
    "SELECT * FROM nope",
    "SELECT * FROM iqlcompat.nope.cpu",
    "SELECT * FROM nope.cpu",
    "SELECT usage FROM cpu WHERE host = 'h1' OR time > '2026-01-01T00:13:00Z'",
    "SELECT usage FROM cpu WHERE time > now() - 1h OR host = 'h1'",
    # aggregates without GROUP BY time
    "SELECT count(usage), sum(usage), mean(usage), median(usage), min(usage), max(usage) FROM cpu",
    "SELECT first(usage), last(usage), spread(usage), stddev(usage) FROM cpu",
    "SELECT percentile(usage, 95), percentile(usage, 5), percentile(cores, 50) FROM cpu",
    "SELECT max(usage) FROM cpu",
    "SELECT min(usage) FROM cpu GROUP BY host",
    "SELECT first(usage) FROM cpu GROUP BY *",
    "SELECT last(cores) FROM cpu WHERE host = 'h3'",
    "SELECT percentile(usage, 90) FROM cpu GROUP BY host",
    "SELECT count(state), first(state), last(state) FROM cpu",
    "SELECT sum(cores), mean(cores), spread(cores), median(cores) FROM cpu GROUP BY host",
    f"SELECT mean(usage) FROM cpu WHERE {W}",
    "SELECT mean(usage) * 2 + 1, max(usage) - min(usage) FROM cpu GROUP BY host",
    "SELECT mean(usage) / mean(cores) AS ratio FROM cpu",
    "SELECT mean(usage), mean(cores), mean(usage) FROM cpu",
    "SELECT count(distinct(cores)) FROM cpu",
    "SELECT distinct(state) FROM cpu",
    "SELECT distinct(cores) FROM cpu WHERE host = 'h1'",
    "SELECT distinct(cores) FROM cpu GROUP BY host LIMIT 3 OFFSET 1",
    "SELECT distinct(state) FROM cpu LIMIT 2",
    "SELECT usage FROM cpu GROUP BY host LIMIT 2 SLIMIT 2 SOFFSET 1",
    f"SELECT mean(usage) FROM cpu WHERE {W} GROUP BY time(5m), host SLIMIT 1 SOFFSET 2",
    "SELECT first(used), last(used), max(used), min(used) FROM disk",
    "SELECT first(used) FROM disk",
    "SELECT last(used) FROM disk",
    "SELECT count(*) FROM mem",
    "SELECT mode(cores), mode(state), mode(ok) FROM cpu",
    f"SELECT mode(cores) FROM cpu WHERE {W} GROUP BY time(2m), host",
    "SELECT mean(*) FROM mem",
    "SELECT max(free) FROM mem GROUP BY host SLIMIT 2",
    # GROUP BY time
    f"SELECT mean(usage) FROM cpu WHERE {W} GROUP BY time(1m)",
    f"SELECT mean(usage), count(usage) FROM cpu WHERE {W2} GROUP BY time(30s)",
    f"SELECT count(state) FROM cpu WHERE {W2} GROUP BY time(20s)",
    f"SELECT count(state) FROM cpu WHERE {W2} GROUP BY time(20s) fill(none)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(none)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(previous)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(linear)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(0)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(-1.5)",
    f"SELECT max(usage), min(usage) FROM cpu WHERE {W} GROUP BY time(2m), host",
    f"SELECT sum(cores) FROM cpu WHERE {W2} AND host = 'h2' GROUP BY time(4s) fill(linear)",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(previous) ORDER BY time DESC",
    f"SELECT mean(usage) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s) fill(linear) ORDER BY time DESC LIMIT 5",
    f"SELECT last(state) FROM cpu WHERE {W2} GROUP BY time(10s) fill(previous)",
    f"SELECT sum(cores) FROM cpu WHERE {W} GROUP BY time(2m, 30s)",
    f"SELECT last(usage) FROM cpu WHERE {W} GROUP BY time(3m), * fill(none)",
    f"SELECT percentile(usage, 75), median(usage) FROM cpu WHERE {W} GROUP BY time(5m)",
    f"SELECT spread(usage), stddev(usage) FROM cpu WHERE {W} GROUP BY time(150s)",
    f"SELECT mean(usage) FROM cpu WHERE {W} GROUP BY time(1m) ORDER BY time DESC LIMIT 3",
    f"SELECT mean(usage) FROM cpu WHERE {W} GROUP BY time(1m), host LIMIT 2 OFFSET 1",
    f"SELECT mean(free) FROM mem WHERE {W} GROUP BY time(1m), host fill(none) SLIMIT 1",
    f"SELECT mean(rx) + mean(tx) FROM net WHERE {W} GROUP BY time(2m), iface",
    f"SELECT count(usage) FROM cpu WHERE {W} AND usage > 50 GROUP BY time(1m), region",
    "SELECT mean(usage) FROM cpu WHERE time >= '2026-01-01T00:00:00Z' AND time < '2026-01-01T00:00:05Z' GROUP BY time(1s)",
    f"SELECT count(state) FROM cpu WHERE {W2} GROUP BY time(20s) fill(previous)",
    "SELECT mean(free) FROM mem WHERE time < '2026-01-01T00:05:00Z' GROUP BY time(1m)",
    "SELECT count(usage) FROM cpu WHERE time >= '2026-01-01T00:00:00Z' GROUP BY time(5m) fill(none)",
    "SELECT mean(usage) FROM cpu WHERE time >= '2026-01-01T00:02:00Z' AND time <= '2026-01-01T00:04:00Z' "
    "GROUP BY time(1m), host fill(linear)",
    # selectors with the selected point's fields and tags
    "SELECT max(usage), host, cores FROM cpu",
    "SELECT min(usage), * FROM cpu WHERE host = 'h2'",
    f"SELECT first(usage), state FROM cpu WHERE {W} GROUP BY time(2m), host",
    "SELECT percentile(usage, 80), host FROM cpu",
    "SELECT last(free), used * 2 FROM mem GROUP BY host",
    "SELECT spread(usage), host FROM cpu",
    "SELECT percentile(usage, 0) FROM cpu",
    "SELECT percentile(usage, 0), host FROM cpu GROUP BY region",
    # more conditions and sources
    "SELECT usage FROM cpu WHERE time > '2026-01-01T00:05:00Z' AND time < '2026-01-01T00:05:30Z' ORDER BY time DESC",
    "SELECT * FROM cpu WHERE host = 'h1' AND ok = false",
    "SELECT usage FROM cpu WHERE cores * 2 > 30 AND usage < 30",
    "SELECT usage FROM cpu WHERE (host = 'h1' OR host = 'h2') AND (usage > 95 OR usage < 2)",
    "SELECT mean(usage) FROM cpu WHERE host =~ /^h[13]$/ GROUP BY region",
    "SELECT sum(cores) FROM /.*/ GROUP BY host",
    "SELECT usage::float, host::tag FROM cpu WHERE host = 'h1' LIMIT 2",
    "SELECT usage / 0, cores / 0, cores % 0, usage % 0 FROM cpu WHERE host = 'h1' LIMIT 2",
    "SELECT usage FROM cpu WHERE usage / 0 = 0 AND cores % 0 = 0 AND host = 'h2' LIMIT 2",
    "SELECT mean(usage) / 0 FROM cpu",
    # top and bottom
    "SELECT top(usage, 3) FROM cpu",
    "SELECT bottom(usage, 2), host, cores FROM cpu",
    f"SELECT top(usage, 2) FROM cpu WHERE {W} GROUP BY time(2m)",
    "SELECT top(cores, 2) FROM cpu GROUP BY host",
    "SELECT bottom(free, 3) FROM mem WHERE host = 'h2' ORDER BY time DESC",
    "SELECT top(used, 3) FROM disk",
    "SELECT top(usage, 2), mean(usage) FROM cpu",
    "SELECT top(usage, 0) FROM cpu",
    # transformations
    "SELECT derivative(usage) FROM cpu WHERE host = 'h1' LIMIT 5",
    "SELECT derivative(usage, 1m) FROM cpu GROUP BY host LIMIT 3",
    "SELECT non_negative_derivative(cores) FROM cpu WHERE host = 'h2'",
    f"SELECT derivative(mean(usage)) FROM cpu WHERE {W} GROUP BY time(1m)",
    f"SELECT derivative(mean(usage), 1s) FROM cpu WHERE {W} GROUP BY time(1m), host",
    f"SELECT non_negative_derivative(max(rx), 1s) FROM net WHERE {W} GROUP BY time(1m), iface",
    f"SELECT derivative(mean(usage)) FROM cpu WHERE {W2} AND host = 'h1' GROUP BY time(4s)",
    "SELECT difference(free) FROM mem WHERE host = 'h1'",
    f"SELECT difference(sum(cores)) FROM cpu WHERE {W} GROUP BY time(2m)",
    "SELECT non_negative_difference(free) FROM mem GROUP BY host",
    "SELECT cumulative_sum(cores) FROM cpu WHERE host = 'h3' LIMIT 10",
    f"SELECT cumulative_sum(count(usage)) FROM cpu WHERE {W} GROUP BY time(1m)",
    "SELECT moving_average(usage, 3) FROM cpu WHERE host = 'h1' LIMIT 6",
    f"SELECT moving_average(mean(usage), 2) FROM cpu WHERE {W} GROUP BY time(1m) fill(none)",
    "SELECT derivative(usage) FROM cpu WHERE host = 'h1' ORDER BY time DESC LIMIT 4",
    "SELECT derivative(used) FROM disk",
    "SELECT difference(used) AS d FROM disk",
    "SELECT derivative(mean(usage)) FROM cpu",
    f"SELECT derivative(usage) FROM cpu WHERE {W} GROUP BY time(1m)",
    # as Grafana and Chronograf send them
    'SELECT mean("usage") FROM "cpu" WHERE ("host" =~ /^h1$/) AND time >= 1767225600000ms and '
    'time <= 1767226200000ms GROUP BY time(30s), "host" fill(null)',
    'SELECT max("free") FROM "iqlcompat"."autogen"."mem" WHERE time >= now() - 3650d GROUP BY time(1m) fill(none) LIMIT 3',
    'SHOW MEASUREMENTS ON "iqlcompat" LIMIT 1000',
    'SHOW TAG VALUES ON "iqlcompat" FROM "cpu" WITH KEY = "host" WHERE "region" =~ /eu|us/',
    "SELECT * FROM cpu GROUP BY * LIMIT 2",
    "SELECT usage FROM cpu GROUP BY host SLIMIT 1",
    "SELECT count(usage) FROM cpu WHERE time > now() - 1h GROUP BY time(10m)",
    f"SELECT mean(*) FROM /^(mem|net)$/ WHERE {W} GROUP BY time(5m)",
    f"SELECT max(usage) FROM cpu WHERE {W} GROUP BY time(3m, -1m) fill(0)",
    # a key that is both a tag and a field: the field wins unless ::tag
    "SELECT * FROM dup",
    "SELECT k FROM dup",
    "SELECT v FROM dup WHERE k = 'a'",
    "SELECT v FROM dup WHERE k = 2",
    "SELECT k::tag, k::field FROM dup",
    "SELECT v FROM dup GROUP BY k",
    "SELECT max(k), k::tag FROM dup",
    "SHOW FIELD KEYS FROM dup",
    "SHOW TAG KEYS FROM dup",
    "SHOW TAG VALUES FROM dup WITH KEY = k",
    # names with spaces, commas and equals signs
    'SELECT * FROM "weird m"',
    'SELECT "f k", v FROM "weird m" WHERE "tag key" = \'a,b=c\'',
    'SELECT sum(v) FROM "weird m" GROUP BY "tag key"',
    'SHOW SERIES FROM "weird m"',
    'SHOW TAG VALUES FROM "weird m" WITH KEY = "tag key"',
    'SHOW FIELD KEYS FROM "weird m"',
    # meta
    "SHOW FIELD KEYS FROM /^(cpu|mem)$/",
    "SHOW TAG KEYS FROM cpu WHERE host = 'h3'",
    "SHOW SERIES LIMIT 2 OFFSET 1",
    "SHOW MEASUREMENTS LIMIT 2",
    "SHOW TAG VALUES FROM cpu WITH KEY != host",
    "SHOW MEASUREMENTS",
    "SHOW MEASUREMENTS WITH MEASUREMENT =~ /^(c|d)/",
    "SHOW MEASUREMENTS WHERE host = 'h2'",
    "SHOW TAG KEYS",
    "SHOW TAG KEYS FROM cpu",
    'SHOW TAG VALUES WITH KEY = "host"',
    'SHOW TAG VALUES FROM cpu WITH KEY IN ("host", "region")',
    "SHOW TAG VALUES FROM cpu WITH KEY =~ /reg/",
    "SHOW TAG VALUES FROM net WITH KEY = iface WHERE host = 'h1'",
    "SHOW FIELD KEYS",
    "SHOW FIELD KEYS FROM cpu",
    "SHOW SERIES",
    "SHOW SERIES FROM cpu",
    "SHOW SERIES FROM cpu WHERE region = 'eu'",
    "SHOW RETENTION POLICIES ON iqlcompat",
    "SHOW RETENTION POLICIES",
    # several statements, errors inside the body
    "SELECT max(usage) FROM cpu; SELECT min(free) FROM mem",
    "SELECT mean(usage), usage FROM cpu",
    "SELECT usage FROM cpu GROUP BY time(1m)",
    "SHOW RETENTION POLICIES ON nope",
]

PARSE_ERRORS: list[str] = [
    "SELEC usage FROM cpu",
    "SELECT FROM cpu",
    "SELECT usage FROM cpu WHERE",
    "SELECT usage FROM",
    "SELECT usage FROM cpu GROUP BY time(1m) fill(sideways)",
    "SELECT usage FROM cpu LIMIT x",
    "SHOW FOO",
    "SELECT usage FROM cpu WHERE host = 'unterminated",
    "SELECT * FROM cpu WHERE host = 'a' GROUP BY",
    "SELECT * FROM cpu LIMIT",
    "SHOW TAG VALUES FROM cpu",
    "SELECT mean(usage FROM cpu",
    "SELECT usage FROM cpu WHERE host =~ 'x'",
    "DROP",
    "SELECT usage FROM cpu ORDER BY host",
    "SELECT usage FROM cpu;; SELEC",
    "SELECT usage\nFROM cpu\nWHERE usage > ",
    "CREATE DATABASE",
    "SELECT usage FROM cpu GROUP BY time(1x)",
]


def _ours(store: Any, q: str, db: str | None = DB, epoch: str | None = None) -> tuple[int, Any]:
    try:
        return 200, json.loads(json.dumps(execute(store, q, db, epoch, {})))
    except ParseError as exc:
        return 400, exc.influx_body()


@pytest.mark.parametrize("q", QUERIES)
def test_same_as_influxdb(q: str, influx: Influx, compat_store: Any) -> None:
    theirs = influx.query(q)
    ours = _ours(compat_store, q)
    if "(" not in q and "ORDER BY" not in q and "LIMIT" not in q:  # raw merge of series
        ours, theirs = ties_sorted(ours), ties_sorted(theirs)
    diff = same(ours, theirs)
    assert diff is None, (
        f"{q}\n{diff[:300]}\nours:   {json.dumps(ours)[:1500]}\ntheirs: {json.dumps(theirs)[:1500]}"
    )


def test_show_databases_as_influxdb(influx: Influx, compat_store: Any) -> None:
    # the server is shared with other tests: compare the databases both of us should have
    def mine(body: Any) -> Any:
        for series in body[1]["results"][0]["series"]:
            series["values"] = [v for v in series["values"] if v[0] == DB]
        return body

    assert (
        same(mine(_ours(compat_store, "SHOW DATABASES")), mine(influx.query("SHOW DATABASES")))
        is None
    )


@pytest.mark.parametrize("q", PARSE_ERRORS)
def test_parse_errors_as_influxdb(q: str, influx: Influx, compat_store: Any) -> None:
    status, theirs = influx.query(q)
    assert status == 400
    assert _ours(compat_store, q) == (400, theirs)


@pytest.mark.parametrize("epoch", ["ns", "u", "ms", "s", "m", "h"])
def test_epoch_as_influxdb(epoch: str, influx: Influx, compat_store: Any) -> None:
    q = "SELECT usage FROM cpu WHERE host = 'h1' LIMIT 3; SELECT mean(usage) FROM cpu GROUP BY host"
    theirs = influx.query(q, epoch=epoch)
    assert same(_ours(compat_store, q, epoch=epoch), theirs) is None


def test_bound_parameters_as_influxdb(influx: Influx, compat_store: Any) -> None:
    q = "SELECT usage FROM cpu WHERE host = $h AND usage > $min; SELECT count(usage) FROM cpu WHERE ok = $ok"
    params = {"h": "h2", "min": 90, "ok": True}
    theirs = influx.query(q, params=json.dumps(params))
    ours = json.loads(json.dumps(execute(compat_store, q, DB, None, params)))
    assert same((200, ours), theirs) is None, f"ours {ours}\ntheirs {theirs}"
    q = "SELECT count(usage) FROM cpu WHERE host =~ $re"
    theirs = influx.query(q, params=json.dumps({"re": "^h[12]$"}))
    with pytest.raises(ParseError) as info:
        execute(compat_store, q, DB, None, {"re": "^h[12]$"})
    assert (400, info.value.influx_body()) == theirs


def test_missing_database_as_influxdb(influx: Influx, compat_store: Any) -> None:
    for db in ("nope", None):
        q = "SELECT usage FROM cpu"
        assert same(_ours(compat_store, q, db=db), influx.query(q, db=db)) is None


@pytest.mark.parametrize(
    ("q", "size"),
    [
        (
            "SELECT usage FROM cpu WHERE host = 'h1' LIMIT 5; SELECT cores FROM cpu WHERE cores > 15 GROUP BY host",
            2,
        ),
        ("SHOW MEASUREMENTS; SELECT max(usage) FROM cpu", 1),
    ],
)
def test_chunked_as_influxdb(q: str, size: int, influx: Influx, compat_store: Any) -> None:
    theirs = influx.chunks(q, chunk_size=str(size))
    ours = json.loads(
        json.dumps(list(execute_chunked(compat_store, q, DB, None, {}, chunk_size=size)))
    )
    assert same(ours, theirs) is None, f"ours {ours}\ntheirs {theirs}"


def test_delete_and_drop_as_influxdb(influx: Influx, store: Any) -> None:
    data = "\n".join(
        f"m{i % 2},host=h{i % 3},dc=d{i % 2} v={i}.5,n={i}i {1_767_225_600 + i}000000000"
        for i in range(60)
    ).encode()
    influx.query("DROP DATABASE iqlscratch", db=None)
    influx.query("CREATE DATABASE iqlscratch", db=None)
    influx.write(data, db="iqlscratch")
    load(store, "iqlscratch", data)
    steps = [
        "DELETE FROM m0 WHERE host = 'h1'",
        "DELETE FROM m1 WHERE time < '2026-01-01T00:00:21Z' AND dc = 'd1'",
        "DELETE WHERE time >= '2026-01-01T00:00:50Z'",
        "DROP SERIES FROM m0 WHERE dc = 'd0' AND host = 'h2'",
        "DROP SERIES FROM m0 WHERE time > 0",
        "DROP SERIES WHERE host = 'h0'",
        "DROP MEASUREMENT m1",
        "DROP MEASUREMENT nope",
    ]
    check = [
        "SELECT * FROM m0",
        "SELECT * FROM m1",
        "SHOW MEASUREMENTS",
        "SHOW SERIES",
        "SHOW TAG VALUES WITH KEY = host",
    ]
    dropped_series = False
    for step in steps:
        assert (
            same(_ours(store, step, "iqlscratch"), influx.query(step, db="iqlscratch")) is None
        ), step
        # InfluxDB 1.6 keeps the tag values of series it dropped in its index: we do not
        dropped_series = dropped_series or step.startswith("DROP SERIES")
        for q in check:
            if dropped_series and q.startswith("SHOW TAG VALUES"):
                continue
            ours, theirs = _ours(store, q, "iqlscratch"), influx.query(q, db="iqlscratch")
            assert same(ours, theirs) is None, f"after {step}: {q}\nours {ours}\ntheirs {theirs}"


def test_create_drop_database_as_influxdb(influx: Influx, store: Any) -> None:
    load(store, DB, b"x v=1 0\n")
    steps = [
        "CREATE DATABASE iqlextra",
        "CREATE RETENTION POLICY short ON iqlextra DURATION 2h REPLICATION 1",
        "CREATE RETENTION POLICY week ON iqlextra DURATION 7d REPLICATION 1 DEFAULT",
        "SHOW RETENTION POLICIES ON iqlextra",
        "CREATE RETENTION POLICY bad ON nope DURATION 2h REPLICATION 1",
        "DROP DATABASE iqlextra",
        "DROP DATABASE never_was",
    ]
    for step in steps:
        ours, theirs = _ours(store, step, None), influx.query(step, db=None)
        assert same(ours, theirs) is None, f"{step}\nours {ours}\ntheirs {theirs}"
    assert "iqlextra" not in store.databases()
