"""Row-level scoping of the platform database in the query compiler (issue 11).

The property: for random SR, SFEMC and host data over several tenants' FQDNs, a tenant's answer
to a query on `flame` equals the operator's answer on a copy of the data holding only that
tenant's rows, for SELECTs of every shape (raw, aggregates, selectors, top, transformations,
GROUP BY time with fill, regex sources, several sources, paging), every SHOW statement and
chunked results. The oracle for "that tenant's rows" is the PCE's rule, written out here:
the most specific delegation covering the FQDN names the owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc.influxql import ParseError, execute, execute_chunked, parse
from flame.clmc.influxql import ast as A
from flame.clmc.influxql.scope import Access, RowScope, Unauthorized, Zone, authorize
from flame.clmc.store.duckdb_store import DuckDBStore
from flame.clmc.tenancy import DelegationMap

from .conftest import load

S = 1_000_000_000
T0 = 1_767_225_600 * S
NOW = T0 + 120 * S
FLAME = "flame"

# Nested on purpose: eu.x.example is cut out of acme's x.example, and a.eu.x.example is acme's
# again (the registry's most-specific-delegation rule, as DNS zone cuts).
DELEGATIONS = DelegationMap(
    {
        "x.example": "acme",
        "eu.x.example": "globex",
        "a.eu.x.example": "acme",
        "y.org": "globex",
        "z.net": "initech",
        "s_1.org": "initech",  # `_` is LIKE's any-character: sx1.org must not match
    }
)
TENANTS = ["acme", "globex", "initech", "umbrella"]  # umbrella: no delegation at all
FQDNS = [
    "x.example",
    "cdn.x.example",
    "eu.x.example",
    "foo.eu.x.example",
    "a.eu.x.example",
    "b.a.eu.x.example",
    "y.org",
    "www.y.org",
    "z.net",
    "xx.example",  # not under x.example
    "x.example.evil",  # nor this
    "x-example.com",
    "s_1.org",
    "w.s_1.org",
    "sx1.org",
    "w.sx1.org",
    "_unknown",
]

# measurement -> (tag keys and their values, fields and their kinds)
MEASUREMENTS: dict[str, tuple[dict[str, list[str]], dict[str, str]]] = {
    "sr_fqdn": (
        {"sr": ["sr-a", "sr-b"], "fqdn": FQDNS, "worker": ["0", "1"]},
        {"requests": "int", "response_time": "float"},
    ),
    "sr_requests": (
        {"sr": ["sr-a", "sr-b"], "fqdn": FQDNS, "sfe": ["e1", "e2", "e3"], "cluster": ["c1", "c2"]},
        {"requests": "int", "bytes_out": "int"},
    ),
    "endpoint_config": (
        {"tenant": TENANTS, "sfc": ["vod", "news"], "sfe": ["e1", "e2"]},
        {"current_state": "str", "connecting_s": "float"},
    ),
    "media": ({"fqdn": FQDNS, "tenant": TENANTS}, {"hits": "int"}),
    "cpu": ({"host": ["h1", "h2"]}, {"usage": "float"}),  # neither tag: nobody's
}


@dataclass(frozen=True)
class Row:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, object], ...]
    time: int

    def line(self) -> str:
        tags = "".join(f",{k}={v}" for k, v in self.tags)
        fields = ",".join(
            f'{k}="{v}"'
            if isinstance(v, str)
            else f"{k}={v}i"
            if isinstance(v, int)
            else f"{k}={v!r}"
            for k, v in self.fields
        )
        return f"{self.measurement}{tags} {fields} {self.time}"

    def visible_to(self, tenant: str) -> bool:
        tags = dict(self.tags)
        if "fqdn" not in tags and "tenant" not in tags:
            return False
        if "fqdn" in tags and DELEGATIONS.owner_of(tags["fqdn"]) != tenant:
            return False
        return "tenant" not in tags or tags["tenant"] == tenant


@st.composite
def rows(draw: st.DrawFn) -> list[Row]:
    out = []
    for i in range(draw(st.integers(0, 40))):
        name = draw(st.sampled_from(sorted(MEASUREMENTS)))
        tag_values, field_kinds = MEASUREMENTS[name]
        tags = tuple((k, draw(st.sampled_from(v))) for k, v in sorted(tag_values.items()))
        fields: list[tuple[str, object]] = []
        for k, kind in sorted(field_kinds.items()):
            if kind == "int":
                fields.append((k, draw(st.integers(0, 1000))))
            elif kind == "float":
                fields.append((k, float(draw(st.integers(0, 4000))) / 4))
            else:
                fields.append((k, draw(st.sampled_from(["connected", "failed", "booting"]))))
        # unique times (ties between series would compare orders the docs leave open)
        second = draw(st.integers(0, 90))
        out.append(Row(name, tags, tuple(fields), T0 + second * S + i))
    return out


def store_of(data: list[Row]) -> DuckDBStore:
    store = DuckDBStore()
    store.create_database(FLAME)
    if data:
        load(store, FLAME, "\n".join(r.line() for r in data).encode())
    return store


def access(tenant: str, delegations: DelegationMap | None = DELEGATIONS) -> Access:
    rows = None if delegations is None else delegations.scope_of(tenant)
    return Access(user=f"{tenant}-bot", tenant=tenant, rows=rows)


W = f"time >= {T0} AND time < {T0 + 60 * S}"
QUERIES = [
    "SELECT * FROM sr_fqdn",
    "SELECT * FROM /.*/",
    "SELECT * FROM /^sr_/ WHERE fqdn =~ /example/",
    "SELECT requests, fqdn FROM sr_fqdn, sr_requests",
    "SELECT mean(response_time), count(requests), max(requests) FROM sr_fqdn GROUP BY fqdn",
    f"SELECT sum(requests) FROM sr_fqdn, sr_requests WHERE {W} GROUP BY time(10s), sr fill(0)",
    "SELECT mean(requests) FROM sr_fqdn GROUP BY time(10s) fill(previous)",
    "SELECT max(response_time), fqdn, worker FROM sr_fqdn",
    "SELECT first(requests), last(requests) FROM sr_requests GROUP BY sfe",
    "SELECT top(requests, 3) FROM sr_requests GROUP BY fqdn",
    "SELECT bottom(bytes_out, 2), sfe FROM sr_requests",
    f"SELECT derivative(mean(requests), 1s) FROM sr_fqdn WHERE {W} GROUP BY time(10s)",
    "SELECT cumulative_sum(requests) FROM sr_requests",
    "SELECT requests FROM sr_fqdn WHERE fqdn =~ /x/ ORDER BY time DESC LIMIT 3 OFFSET 1",
    "SELECT count(requests) FROM sr_fqdn WHERE fqdn = 'y.org' OR fqdn = 'x.example'",
    "SELECT count(requests) FROM sr_fqdn WHERE fqdn != 'x.example' GROUP BY fqdn SLIMIT 2 SOFFSET 1",
    "SELECT distinct(sfe) FROM sr_requests",
    "SELECT count(distinct(fqdn)) FROM sr_requests",
    "SELECT percentile(response_time, 90), median(response_time) FROM sr_fqdn GROUP BY sr",
    "SELECT mean(*) FROM sr_requests GROUP BY cluster",
    "SELECT * FROM endpoint_config GROUP BY *",
    "SELECT current_state FROM endpoint_config WHERE sfc = 'vod'",
    "SELECT hits FROM media GROUP BY tenant, fqdn",
    "SELECT count(usage) FROM cpu",
    "SELECT * FROM sr_fqdn WHERE time > now() - 100s",
    "SHOW DATABASES",
    "SHOW MEASUREMENTS",
    "SHOW MEASUREMENTS WHERE fqdn = 'x.example'",
    "SHOW MEASUREMENTS WITH MEASUREMENT =~ /sr/",
    "SHOW TAG KEYS",
    "SHOW TAG KEYS FROM sr_requests WHERE sfe = 'e1'",
    "SHOW TAG VALUES WITH KEY = fqdn",
    "SHOW TAG VALUES FROM /.*/ WITH KEY IN (sfe, sr, tenant)",
    "SHOW TAG VALUES WITH KEY =~ /.*/ LIMIT 3 OFFSET 1",
    "SHOW SERIES",
    "SHOW SERIES FROM sr_fqdn WHERE sr = 'sr-a'",
    "SHOW FIELD KEYS",
    "SHOW FIELD KEYS FROM endpoint_config",
    "SHOW RETENTION POLICIES ON flame",
]
CHUNKED = [
    "SELECT * FROM /.*/",
    "SELECT requests FROM sr_fqdn, sr_requests GROUP BY fqdn",
    f"SELECT count(requests) FROM sr_requests WHERE {W} GROUP BY time(5s), sfe fill(none)",
    "SHOW SERIES",
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=rows(), tenant=st.sampled_from(TENANTS))
def test_a_tenant_sees_what_the_operator_sees_of_its_rows_alone(
    data: list[Row], tenant: str
) -> None:
    full, own = store_of(data), store_of([r for r in data if r.visible_to(tenant)])
    try:
        scope = access(tenant)
        text = "; ".join(QUERIES)
        got = execute(full, text, FLAME, now_ns=NOW, access=scope)
        want = execute(own, text, FLAME, now_ns=NOW)
        for q, g, w in zip(QUERIES, got["results"], want["results"], strict=True):  # type: ignore[call-overload]
            assert g == w, q
        for q in CHUNKED:
            got_chunks = list(
                execute_chunked(full, q, FLAME, chunk_size=2, now_ns=NOW, access=scope)
            )
            want_chunks = list(execute_chunked(own, q, FLAME, chunk_size=2, now_ns=NOW))
            assert got_chunks == want_chunks, q
    finally:
        full.close()
        own.close()


def test_the_oracle_and_the_compiler_agree_on_every_name() -> None:
    """Each FQDN of the pool, for each tenant: visible in SQL exactly when the PCE's rule says."""
    store = store_of(
        [Row("sr_fqdn", (("fqdn", f),), (("requests", 1),), T0 + i) for i, f in enumerate(FQDNS)]
    )
    try:
        for tenant in TENANTS:
            body = execute(
                store, "SELECT requests, fqdn FROM sr_fqdn", FLAME, access=access(tenant)
            )
            series = body["results"][0].get("series", [])  # type: ignore[index]
            seen = {v[2] for s in series for v in s["values"]}
            assert seen == {f for f in FQDNS if DELEGATIONS.owner_of(f) == tenant}, tenant
            assert seen == {f for f in FQDNS if DELEGATIONS.scope_of(tenant).sees_fqdn(f)}
        assert DELEGATIONS.scope_of("acme").zones == {
            Zone("x.example", frozenset({"eu.x.example"})),
            Zone("a.eu.x.example"),
        }
    finally:
        store.close()


def test_unknown_delegations_show_nothing_of_the_platform_database() -> None:
    store = store_of(
        [
            Row("sr_fqdn", (("fqdn", "x.example"),), (("requests", 1),), T0),
            Row("endpoint_config", (("tenant", "acme"),), (("connecting_s", 1.0),), T0),
        ]
    )
    try:
        blind = access("acme", None)
        for q in ("SELECT * FROM /.*/", "SHOW MEASUREMENTS", "SHOW SERIES", "SHOW TAG KEYS"):
            body = execute(store, q, FLAME, access=blind)
            assert body == {"results": [{"statement_id": 0}]}, q
        # the operator (no access) sees everything
        assert "series" in execute(store, "SELECT * FROM /.*/", FLAME)["results"][0]  # type: ignore[index]
    finally:
        store.close()


def test_subqueries_are_refused_by_the_parser_so_nothing_reaches_the_store() -> None:
    # The parser refuses them (docs/clmc-query.md); if it ever takes them, their scans read
    # through the same scoped tables as every other scan (Context.scoped).
    with pytest.raises(ParseError):
        parse("SELECT mean(requests) FROM (SELECT requests FROM sr_fqdn)")


# -- which statements a tenant may run at all --------------------------------------------------

ACME = access("acme")


@pytest.mark.parametrize(
    ("text", "db", "allowed"),
    [
        ("SELECT * FROM m", "acme", True),
        ("SELECT * FROM m", "acme_video", True),
        ("SELECT * FROM m", "flame", True),
        ("SELECT * FROM m", "acmex", False),  # another tenant's, not acme's
        ("SELECT * FROM m", "globex", False),
        ('SELECT * FROM "globex".."m"', "acme", False),
        ('SELECT * FROM "acme".."m", "globex".."m"', "flame", False),
        ("SELECT * FROM m", None, True),  # fails in the statement: database name required
        ("SHOW DATABASES", None, True),
        ("SHOW MEASUREMENTS ON flame", None, True),
        ("SHOW MEASUREMENTS ON globex", "acme", False),
        ('SHOW TAG KEYS ON acme FROM "globex".."m"', None, False),
        ("SHOW TAG VALUES ON flame WITH KEY = fqdn", None, True),
        ('SHOW SERIES FROM "globex".."m"', "acme", False),
        ("SHOW FIELD KEYS", "globex", False),
        ("SHOW RETENTION POLICIES ON flame", None, True),
        ("SHOW RETENTION POLICIES ON globex", None, False),
        ("CREATE DATABASE acme_new", None, True),
        ("CREATE DATABASE flame", None, False),
        ("CREATE DATABASE globex_x", None, False),
        ("DROP DATABASE acme", None, True),
        ("DROP DATABASE flame", None, False),
        ("CREATE RETENTION POLICY r ON acme DURATION 1h REPLICATION 1", None, True),
        ("CREATE RETENTION POLICY r ON flame DURATION 1h REPLICATION 1", None, False),
        ("DROP MEASUREMENT sr_fqdn", "flame", False),
        ("DROP MEASUREMENT m", "acme", True),
        ("DELETE FROM sr_fqdn", "flame", False),
        ('DELETE FROM "flame".."sr_fqdn"', "acme", False),
        ("DROP SERIES FROM sr_fqdn", "flame", False),
        ("DROP SERIES FROM m", "acme_x", True),
    ],
)
def test_authorize(text: str, db: str | None, allowed: bool) -> None:
    statements = parse(text)
    if allowed:
        authorize(statements, db, ACME)
    else:
        with pytest.raises(Unauthorized, match='"acme-bot" user is not authorized'):
            authorize(statements, db, ACME)
    authorize(statements, db, None)  # the operator may run anything


def test_a_statement_kind_the_policy_does_not_know_is_refused() -> None:
    @dataclass(frozen=True)
    class Future:  # e.g. a statement a later parser adds
        pass

    with pytest.raises(Unauthorized, match="Future"):
        authorize([Future()], "acme", ACME)  # type: ignore[list-item]


def test_the_compiler_refuses_alone_what_authorize_refuses() -> None:
    """Defense in depth: even without `authorize`, the context refuses other databases."""
    from flame.clmc.influxql.context import Context
    from flame.clmc.influxql.errors import StatementError
    from flame.clmc.influxql.meta import run_meta

    store = store_of([])
    store.create_database("globex")
    try:
        ctx = Context(store, "acme", NOW, access=ACME)
        for stmt in (
            A.DropDatabase("globex"),
            A.DropDatabase("flame"),
            A.CreateDatabase("flame"),
            A.ShowMeasurements(database="globex"),
        ):
            with pytest.raises(StatementError, match="not authorized"):
                run_meta(ctx, stmt)
        assert "globex" in store.databases()
    finally:
        store.close()


def test_names_and_tenants_reach_sql_only_when_plain() -> None:
    for bad in ("x.example'; DROP TABLE t; --", "X.Example", "a b", "*.x.example", ""):
        with pytest.raises(ValueError, match="not a lower-case DNS name"):
            Zone(bad)
    with pytest.raises(ValueError, match="is not a name under"):
        Zone("x.example", frozenset({"y.example"}))  # a cut must lie under its zone
    with pytest.raises(ValueError, match="not a tenant id"):
        RowScope("Acme'")
    kept = DelegationMap({"x.example": "acme", "bad name": "acme", "y.example": "Not A Tenant"})
    assert kept.owners == {"x.example": "acme"}
