"""Parser properties: any tree renders to text that parses back to the same tree, and no input
makes the parser raise anything but ParseError."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc.influxql import ParseError, parse, render
from flame.clmc.influxql import ast as A
from flame.clmc.influxql.lexer import KEYWORDS
from flame.clmc.influxql.parser import regex_problem

_IDENT = re.compile(r"[a-z_][a-z0-9_]*\Z")

names = st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s)
call_names = st.from_regex(_IDENT, fullmatch=True).filter(lambda s: s.upper() not in KEYWORDS)
param_names = st.from_regex(re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,6}\Z"), fullmatch=True)
# Regexes the parser accepts wherever a regex may stand (it refuses what cannot compile)
patterns = st.text(max_size=8).filter(
    lambda s: (
        "\n" not in s
        and not s.endswith("\\")
        and regex_problem(s) is None
        and regex_problem(s, python=False) is None
    )
)
durations = st.integers(min_value=1, max_value=10**15)

literals = st.one_of(
    st.builds(A.IntegerLiteral, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(A.NumberLiteral, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(A.StringLiteral, st.text(max_size=10)),
    st.builds(A.BooleanLiteral, st.booleans()),
    st.builds(A.DurationLiteral, st.integers(min_value=-(10**15), max_value=10**15)),
    st.builds(A.BoundParameter, param_names),
)
refs = st.builds(
    A.VarRef,
    names,
    st.sampled_from([None, "float", "integer", "string", "boolean", "field", "tag"]),
)


def _exprs(leaf: st.SearchStrategy[A.Expr]) -> st.SearchStrategy[A.Expr]:
    def extend(inner: st.SearchStrategy[A.Expr]) -> st.SearchStrategy[A.Expr]:
        plain_ops = [op for op in A.Op if op not in (A.Op.EQREGEX, A.Op.NEQREGEX)]
        return st.one_of(
            st.builds(A.BinaryExpr, st.sampled_from(plain_ops), inner, inner),
            st.builds(
                A.BinaryExpr,
                st.sampled_from([A.Op.EQREGEX, A.Op.NEQREGEX]),
                inner,
                st.builds(A.RegexLiteral, patterns),
            ),
            st.builds(
                A.Call,
                call_names,
                st.lists(
                    st.one_of(inner, st.just(A.Wildcard()), st.builds(A.RegexLiteral, patterns)),
                    max_size=3,
                ).map(tuple),
            ),
        )

    return st.recursive(leaf, extend, max_leaves=8)


exprs = _exprs(st.one_of(literals, refs))
fields = st.builds(
    A.Field,
    st.one_of(exprs, st.builds(A.Wildcard, st.sampled_from([None, "field", "tag"]))),
    st.one_of(st.none(), names),
)
measurements = st.one_of(
    st.builds(A.Measurement, name=names, database=st.one_of(st.none(), names), rp=st.none()),
    st.builds(A.Measurement, name=names, rp=names),
    st.builds(A.Measurement, name=names, database=names, rp=names),
    st.builds(A.Measurement, regex=patterns, database=st.one_of(st.none(), names)),
)
dimensions = st.one_of(
    st.builds(A.GroupByTime, durations, st.integers(min_value=-(10**12), max_value=10**12)),
    st.builds(A.VarRef, names),
    st.just(A.Wildcard()),
    st.builds(A.RegexLiteral, patterns),
)
fills = st.one_of(
    st.builds(
        A.Fill,
        st.sampled_from([A.FillMode.NULL, A.FillMode.NONE, A.FillMode.PREVIOUS, A.FillMode.LINEAR]),
    ),
    st.builds(A.Fill, st.just(A.FillMode.NUMBER), st.integers(-(10**6), 10**6)),
    st.builds(A.Fill, st.just(A.FillMode.NUMBER), st.floats(-1e6, 1e6)),
)
counts = st.integers(min_value=0, max_value=10**6)
selects = st.builds(
    A.SelectStatement,
    fields=st.lists(fields, min_size=1, max_size=3).map(tuple),
    sources=st.lists(measurements, min_size=1, max_size=2).map(tuple),
    condition=st.one_of(st.none(), exprs),
    dimensions=st.lists(dimensions, max_size=3).map(tuple),
    fill=fills,
    descending=st.booleans(),
    limit=counts,
    offset=counts,
    slimit=counts,
    soffset=counts,
    tz=st.one_of(st.none(), st.text(max_size=6)),
)
opt_names = st.one_of(st.none(), names)
sources = st.lists(measurements, max_size=2).map(tuple)
conds = st.one_of(st.none(), exprs)
metas = st.one_of(
    st.just(A.ShowDatabases()),
    st.builds(
        A.ShowMeasurements,
        opt_names,
        st.one_of(st.none(), patterns),
        st.none(),
        conds,
        counts,
        counts,
    ),
    st.builds(A.ShowMeasurements, opt_names, st.none(), names, conds, counts, counts),
    st.builds(A.ShowTagKeys, opt_names, sources, conds, counts, counts),
    st.builds(
        A.ShowTagValues,
        st.lists(names, min_size=1, max_size=3).map(tuple),
        opt_names,
        sources,
        st.none(),
        st.just(False),
        conds,
        counts,
        counts,
    ),
    st.builds(
        A.ShowTagValues,
        st.just(()),
        opt_names,
        sources,
        patterns,
        st.booleans(),
        conds,
        counts,
        counts,
    ),
    st.builds(A.ShowFieldKeys, opt_names, sources, counts, counts),
    st.builds(A.ShowSeries, opt_names, sources, conds, counts, counts),
    st.builds(A.ShowRetentionPolicies, opt_names),
    st.builds(A.CreateDatabase, names, st.one_of(st.none(), durations), opt_names),
    st.builds(A.DropDatabase, names),
    st.builds(
        A.CreateRetentionPolicy,
        names,
        names,
        durations,
        st.integers(1, 5),
        durations,
        st.booleans(),
    ),
    st.builds(A.DropMeasurement, names),
    st.builds(A.Delete, st.lists(measurements, min_size=1, max_size=2).map(tuple), conds),
    st.builds(A.Delete, st.just(()), exprs),
    st.builds(A.DropSeries, st.lists(measurements, min_size=1, max_size=2).map(tuple), conds),
    st.builds(A.DropSeries, st.just(()), exprs),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(selects, metas), min_size=1, max_size=3))
def test_render_then_parse_gives_the_same_tree(statements: list[A.Statement]) -> None:
    text = ";\n".join(render(s) for s in statements)
    assert parse(text) == statements, text


_VOCAB = ["SELECT", "FROM", "WHERE", "GROUP", "BY", "time(", "fill(", ")", "(", ",", ";", "*", "=~",
          "/x.*/", "'s'", '"q"', "1", "1.5", "10s", "now()", "-", "+", "AND", "OR", "=", "<", "mean(",
          "SHOW", "TAG", "VALUES", "WITH", "KEY", "IN", "LIMIT", "$p", "::", ".", "..", "DELETE", "DROP",
          "CREATE", "DATABASE", "MEASUREMENTS", "SERIES", "ON", "DEFAULT", "'", '"', "/", "\\"]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_VOCAB), max_size=25).map(" ".join))
)
def test_any_text_parses_or_raises_a_located_parse_error(text: str) -> None:
    for params in (None, {"p": 1}):
        error: ParseError | None = None
        try:
            parse(text, params)
        except ParseError as exc:
            error = exc
        if error is not None:
            assert error.line >= 1
            assert error.char >= 1
            assert error.message.startswith("error parsing query: ")


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    text = "SELECT " + "(" * 5000 + "a" + ")" * 5000 + " FROM m"
    with pytest.raises(ParseError, match="nested too deeply"):
        parse(text)
