"""Run InfluxQL text and shape InfluxDB 1.x result bodies (whole or chunked).

Both entry points take the caller's `access` (None: the operator) and check the whole request
with `scope.authorize` before running any of it; the compiler then reads the shared database
through the caller's row scope (`Context.scoped`)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.context import Context
from flame.clmc.influxql.dialect import DUCKDB, Dialect
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.meta import run_meta
from flame.clmc.influxql.parser import parse
from flame.clmc.influxql.scope import Access, authorize
from flame.clmc.influxql.select import run_select, select_rows
from flame.clmc.influxql.timefmt import EPOCH_UNITS
from flame.clmc.store.base import Store

__all__ = ["DEFAULT_CHUNK_SIZE", "execute", "execute_chunked"]

DEFAULT_CHUNK_SIZE = 10_000
Result = dict[str, object]


def _context(
    store: Store,
    db: str | None,
    epoch: str | None,
    now_ns: int | None,
    dialect: Dialect,
    access: Access | None,
) -> Context:
    unit = epoch if epoch in EPOCH_UNITS else None  # InfluxDB ignores an unknown epoch
    now = time.time_ns() if now_ns is None else now_ns
    return Context(store, db or None, now, unit, dialect, access)


def _run(ctx: Context, sid: int, stmt: A.Statement) -> Result:
    try:
        series = (
            run_select(ctx, stmt) if isinstance(stmt, A.SelectStatement) else run_meta(ctx, stmt)
        )
    except StatementError as exc:
        return {"statement_id": sid, "error": exc.message}
    result: Result = {"statement_id": sid}
    if series:
        result["series"] = series
    return result


def execute(
    store: Store,
    text: str,
    db: str | None = None,
    epoch: str | None = None,
    params: Mapping[str, object] | None = None,
    *,
    now_ns: int | None = None,
    dialect: Dialect = DUCKDB,
    access: Access | None = None,
) -> dict[str, object]:
    """The JSON body InfluxDB 1.x answers `/query` with; raises ParseError (HTTP 400) and
    `scope.Unauthorized` (HTTP 403) before running anything."""
    statements = parse(text, params or {})
    authorize(statements, db or None, access)
    ctx = _context(store, db, epoch, now_ns, dialect, access)
    return {"results": [_run(ctx, i, stmt) for i, stmt in enumerate(statements)]}


def execute_chunked(
    store: Store,
    text: str,
    db: str | None = None,
    epoch: str | None = None,
    params: Mapping[str, object] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    now_ns: int | None = None,
    dialect: Dialect = DUCKDB,
    access: Access | None = None,
) -> Iterator[dict[str, object]]:
    """`chunked=true`: successive bodies of at most `chunk_size` rows, flagged `partial` as
    InfluxDB does. Parses and authorizes before returning, so a ParseError or `Unauthorized`
    is raised before any body is sent."""
    statements = parse(text, params or {})
    authorize(statements, db or None, access)
    ctx = _context(store, db, epoch, now_ns, dialect, access)
    size = chunk_size if chunk_size > 0 else DEFAULT_CHUNK_SIZE
    return _chunks(ctx, statements, size)


def _chunks(ctx: Context, statements: list[A.Statement], size: int) -> Iterator[dict[str, object]]:
    for sid, stmt in enumerate(statements):
        if not isinstance(stmt, A.SelectStatement):  # SHOW and friends come whole, as InfluxDB
            yield {"results": [_run(ctx, sid, stmt)]}
            continue
        try:
            found = select_rows(ctx, stmt)
        except StatementError as exc:
            yield {"results": [{"statement_id": sid, "error": exc.message}]}
            continue
        if not found:
            yield {"results": [{"statement_id": sid}]}
            continue
        # each series in pieces of at most `size` rows, converted to Python one piece at a time
        pieces = [(rows, start) for rows in found for start in range(0, len(rows), size)]
        for i, (rows, start) in enumerate(pieces):
            piece = rows.series(start, start + size)
            if start + size < len(rows):
                piece["partial"] = True
            body: Result = {"statement_id": sid, "series": [piece]}
            if i + 1 < len(pieces):
                body["partial"] = True
            yield {"results": [body]}
