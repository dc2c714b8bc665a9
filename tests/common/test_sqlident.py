"""One SQL identifier quoter (issue 18 item 4): any name round-trips through SQLite and DuckDB."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.common.sqlident import quote_identifier

# Any text the engines can carry: no NUL, no lone surrogates (not encodable as UTF-8).
names = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1)
hostile = st.sampled_from(
    ['x"; DROP TABLE kept; --', '"', '""', "select", "a.b", "a b", "é", "1x", "\n", "--"]
)


@pytest.fixture(scope="module")
def lite() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE kept (x INTEGER)")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE kept (x INTEGER)")
    yield conn
    conn.close()


@settings(max_examples=150)
@given(name=names | hostile)
def test_a_quoted_name_is_the_column_sqlite_creates(lite: sqlite3.Connection, name: str) -> None:
    quoted = quote_identifier(name)
    lite.execute(f"CREATE TEMP TABLE {quoted} ({quoted} INTEGER)")
    try:
        lite.execute(f"INSERT INTO {quoted} VALUES (7)")
        cursor = lite.execute(f"SELECT {quoted} FROM {quoted}")
        assert cursor.description[0][0] == name
        assert cursor.fetchall() == [(7,)]
    finally:
        lite.execute(f"DROP TABLE {quoted}")
    assert lite.execute("SELECT count(*) FROM kept").fetchone() == (0,)


@settings(max_examples=150)
@given(name=names | hostile)
def test_a_quoted_name_is_the_column_duckdb_creates(
    duck: duckdb.DuckDBPyConnection, name: str
) -> None:
    quoted = quote_identifier(name)
    duck.execute(f"CREATE TEMP TABLE {quoted} ({quoted} INTEGER)")
    try:
        duck.execute(f"INSERT INTO {quoted} VALUES (7)")
        duck.execute(f"SELECT {quoted} FROM {quoted}")
        assert duck.description is not None
        assert duck.description[0][0] == name
        assert duck.fetchall() == [(7,)]
    finally:
        duck.execute(f"DROP TABLE {quoted}")
    assert duck.execute("SELECT count(*) FROM kept").fetchone() == (0,)


@pytest.mark.parametrize("name", ["", "a\x00b"])
def test_names_no_engine_can_carry_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        quote_identifier(name)


def test_the_standard_form() -> None:
    assert quote_identifier('cpu "load"') == '"cpu ""load"""'
