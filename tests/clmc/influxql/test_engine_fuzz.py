"""Random statements over a small vocabulary never crash the engine: every outcome is a body
(possibly with statement errors) or a ParseError, never another exception (an HTTP 500)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc.influxql import ParseError, execute, render
from flame.clmc.influxql import ast as A
from flame.clmc.store.duckdb_store import DuckDBStore

from .conftest import load

DATA = b"""cpu,host=a,region=eu value=1.5,n=10i,s="x",b=true 1767225600000000000
cpu,host=b value=2,n=20i,s="y",b=false 1767225610000000000
cpu,host=a,region=eu value=3,n=30i 1767225620000000000
mem,host=a free=100i,used=0.5 1767225605000000000
"""

keys = st.sampled_from(["value", "n", "s", "b", "host", "region", "free", "used", "nope", "time"])
refs = st.builds(A.VarRef, keys, st.sampled_from([None, None, "tag", "field"]))
lits = st.one_of(
    st.builds(A.IntegerLiteral, st.integers(-5, 50)),
    st.builds(A.NumberLiteral, st.floats(-5, 50)),
    st.builds(A.StringLiteral, st.sampled_from(["a", "b", "x", "", "eu"])),
    st.builds(A.BooleanLiteral, st.booleans()),
)
arith = st.sampled_from(
    [A.Op.ADD, A.Op.SUB, A.Op.MUL, A.Op.DIV, A.Op.MOD, A.Op.BITAND, A.Op.BITXOR]
)
values = st.recursive(
    st.one_of(refs, lits), lambda inner: st.builds(A.BinaryExpr, arith, inner, inner), max_leaves=4
)
funcs = st.sampled_from(
    [
        "count",
        "sum",
        "mean",
        "median",
        "min",
        "max",
        "first",
        "last",
        "spread",
        "stddev",
        "distinct",
    ]
)
calls = st.one_of(
    st.builds(lambda f, r: A.Call(f, (r,)), funcs, refs),
    st.builds(
        lambda r, p: A.Call("percentile", (r, A.IntegerLiteral(p))), refs, st.integers(0, 100)
    ),
    st.builds(lambda f: A.Call(f, (A.Wildcard(),)), funcs),
    st.builds(
        lambda f, r, n: A.Call(f, (r, A.IntegerLiteral(n))),
        st.sampled_from(["top", "bottom"]),
        refs,
        st.integers(0, 3),
    ),
)
agg_values = st.recursive(
    st.one_of(calls, lits), lambda inner: st.builds(A.BinaryExpr, arith, inner, inner), max_leaves=3
)
comparisons = st.one_of(
    st.builds(
        A.BinaryExpr, st.sampled_from([A.Op.EQ, A.Op.NEQ, A.Op.LT, A.Op.GTE]), values, values
    ),
    st.builds(
        A.BinaryExpr,
        st.sampled_from([A.Op.EQREGEX, A.Op.NEQREGEX]),
        refs,
        st.builds(A.RegexLiteral, st.sampled_from(["^a", "e", ".*"])),
    ),
    st.builds(
        A.BinaryExpr,
        st.sampled_from([A.Op.GT, A.Op.LTE]),
        st.just(A.VarRef("time")),
        st.sampled_from(
            [
                A.StringLiteral("2026-01-01T00:00:05Z"),
                A.IntegerLiteral(1767225600000000000),
                A.BinaryExpr(A.Op.SUB, A.Call("now"), A.DurationLiteral(3600 * 10**9 * 24 * 400)),
            ]
        ),
    ),
)
conditions = st.recursive(
    comparisons,
    lambda inner: st.builds(A.BinaryExpr, st.sampled_from([A.Op.AND, A.Op.OR]), inner, inner),
    max_leaves=4,
)
dims = st.lists(
    st.one_of(
        st.builds(
            A.GroupByTime,
            st.sampled_from([10**9, 5 * 10**9, 60 * 10**9]),
            st.integers(-3, 3).map(lambda x: x * 10**9),
        ),
        st.builds(A.VarRef, st.sampled_from(["host", "region", "value"])),
        st.just(A.Wildcard()),
    ),
    max_size=2,
).map(tuple)
fills = st.sampled_from(
    [
        A.Fill(),
        A.Fill(A.FillMode.NONE),
        A.Fill(A.FillMode.PREVIOUS),
        A.Fill(A.FillMode.LINEAR),
        A.Fill(A.FillMode.NUMBER, 0),
    ]
)
transforms = st.one_of(
    st.builds(
        lambda f, a: A.Call(f, (a,)),
        st.sampled_from(
            [
                "derivative",
                "non_negative_derivative",
                "difference",
                "non_negative_difference",
                "cumulative_sum",
            ]
        ),
        st.one_of(refs, calls),
    ),
    st.builds(
        lambda a, u: A.Call("derivative", (a, A.DurationLiteral(u))),
        st.one_of(refs, calls),
        st.sampled_from([10**9, 60 * 10**9]),
    ),
    st.builds(
        lambda a, n: A.Call("moving_average", (a, A.IntegerLiteral(n))),
        st.one_of(refs, calls),
        st.integers(1, 4),
    ),
)
field_lists = st.one_of(
    st.lists(st.builds(A.Field, transforms), min_size=1, max_size=1),
    st.lists(st.builds(A.Field, values), min_size=1, max_size=3),
    st.lists(st.builds(A.Field, agg_values), min_size=1, max_size=3),
    st.lists(st.builds(A.Field, st.just(A.Wildcard())), min_size=1, max_size=1),
    st.tuples(
        st.builds(
            A.Field,
            st.builds(
                lambda f, r: A.Call(f, (r,)), st.sampled_from(["max", "first", "percentile"]), refs
            ),
        ),
        st.builds(A.Field, refs),
    ).map(list),
).map(tuple)
sources = st.lists(
    st.sampled_from(
        [A.Measurement("cpu"), A.Measurement("mem"), A.Measurement(regex="."), A.Measurement("zz")]
    ),
    min_size=1,
    max_size=2,
).map(tuple)
selects = st.builds(
    A.SelectStatement,
    fields=field_lists,
    sources=sources,
    condition=st.one_of(st.none(), conditions),
    dimensions=dims,
    fill=fills,
    descending=st.booleans(),
    limit=st.integers(0, 3),
    offset=st.integers(0, 2),
    slimit=st.integers(0, 2),
    soffset=st.integers(0, 1),
)


@pytest.fixture(scope="module")
def fuzz_store() -> Iterator[DuckDBStore]:
    st_ = DuckDBStore()
    load(st_, "f", DATA)
    yield st_
    st_.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(selects)
def test_random_selects_never_crash(fuzz_store: DuckDBStore, stmt: A.SelectStatement) -> None:
    text = render(stmt)
    try:
        body: dict[str, Any] = execute(
            fuzz_store, text, "f", None, {}, now_ns=1767225600000000000 + 3600 * 10**9
        )
    except ParseError:
        return
    for result in body["results"]:  # a store failure means we compiled bad SQL
        assert not str(result.get("error", "")).startswith("query failed"), (render(stmt), result)


opt_sources = st.one_of(st.just(()), sources)
opt_conditions = st.one_of(st.none(), conditions)
metas = st.one_of(
    st.builds(
        A.ShowMeasurements, condition=opt_conditions, regex=st.sampled_from([None, "^c", "x"])
    ),
    st.builds(A.ShowTagKeys, sources=opt_sources, condition=opt_conditions),
    st.builds(
        A.ShowTagValues,
        st.sampled_from([("host",), ("region", "host"), ("value",)]),
        sources=opt_sources,
        condition=opt_conditions,
        negate=st.booleans(),
    ),
    st.builds(A.ShowFieldKeys, sources=opt_sources),
    st.builds(A.ShowSeries, sources=opt_sources, condition=opt_conditions, limit=st.integers(0, 2)),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(metas)
def test_random_show_statements_never_crash(fuzz_store: DuckDBStore, stmt: A.Statement) -> None:
    try:
        body: dict[str, Any] = execute(fuzz_store, render(stmt), "f", None, {})
    except ParseError:
        return
    for result in body["results"]:  # a store failure means we compiled bad SQL
        assert not str(result.get("error", "")).startswith("query failed"), (render(stmt), result)
