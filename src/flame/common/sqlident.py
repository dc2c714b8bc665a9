"""Quoting SQL identifiers (table and column names) for SQLite, DuckDB and PostgreSQL.

Names written by users (measurements, tags, fields) become identifiers, so they are always quoted
the standard way: in double quotes, an inner double quote doubled. Anything else, including
keywords, spaces, dots and non-ASCII letters, then stands for itself. NUL cannot be in an
identifier (the engines' C APIs end the statement there) and DuckDB and PostgreSQL refuse an
empty one, so both are refused here rather than failing later in one engine only.
ClickHouse escapes with backslashes instead and keeps its own quoter.
"""

from __future__ import annotations

__all__ = ["quote_identifier"]


def quote_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier: `a"b` -> `"a""b"`. ValueError: empty or with a NUL."""
    if not name:
        raise ValueError("an SQL identifier cannot be empty")
    if "\x00" in name:
        raise ValueError("an SQL identifier cannot contain a NUL character")
    return '"' + name.replace('"', '""') + '"'
