"""What a statement runs against: the store, the request's database, `now()`, output format."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.dialect import DUCKDB, Dialect
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.scope import Access
from flame.clmc.store.base import DEFAULT_RP, MeasurementSchema, Store

__all__ = ["Context"]

_log = logging.getLogger(__name__)


@dataclass
class Context:
    store: Store
    database: str | None
    now_ns: int
    epoch: str | None = None
    dialect: Dialect = DUCKDB
    access: Access | None = None  # None: the operator, who may do anything
    _dbs: list[str] | None = field(default=None, repr=False)

    def query(self, sql: str, params: Sequence[object]) -> pa.Table:
        """Run compiled SQL; a store failure fails this statement only, as InfluxDB would."""
        try:
            return self.store.query(sql, params)
        except Exception as exc:  # the store's own exception types are not ours to know
            _log.exception("InfluxQL statement failed in the store; answering a statement error")
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StatementError(f"query failed: {detail}") from exc

    def databases(self) -> list[str]:
        if self._dbs is None:
            self._dbs = list(self.store.databases())
        return self._dbs

    def forget_catalog(self) -> None:
        self._dbs = None

    def require_database(self, name: str | None, *, change: bool = False) -> str:
        db = name if name is not None else self.database
        if not db:
            raise StatementError("database name required")
        access = self.access
        # `scope.authorize` refused the request already; this keeps the compiler safe alone.
        if access is not None and not (access.may_change(db) if change else access.may_read(db)):
            raise StatementError(f"not authorized to use database {db}")
        if db not in self.databases():
            raise StatementError(f"database not found: {db}")
        return db

    def row_scoped(self, database: str) -> bool:
        """Whether reads of `database` are narrowed to the caller's rows."""
        return self.access is not None and self.access.scopes(database)

    def scoped(self, schema: MeasurementSchema) -> MeasurementSchema:
        """`schema` as this caller may read it: in the shared database, its table becomes the
        rows of the caller's scope (every scan of the statement reads through it)."""
        access = self.access
        if access is None or not access.scopes(schema.database):
            return schema
        rows = access.rows
        predicate = "FALSE" if rows is None else rows.predicate(schema, self.dialect)
        table = f"(SELECT * FROM {schema.table} WHERE {predicate})"
        return dataclasses.replace(schema, table=table)

    def narrowed(self, schema: MeasurementSchema) -> MeasurementSchema | None:
        """A scoped `schema` with only the keys some row this caller sees has a value of (None:
        it sees no row), for expanding wildcards: a measurement's keys are shared by every
        tenant's rows, and `SELECT *` must not name another tenant's."""
        if not self.row_scoped(schema.database):
            return schema
        keys = [(True, k, schema.tag_column(k)) for k in schema.tag_keys]
        keys += [(False, k, schema.field_column(k)) for k in schema.field_types]
        counts = "".join(f", count({col}) AS k{i}" for i, (_, _, col) in enumerate(keys))
        got = self.query(f"SELECT count(*) AS n{counts} FROM {schema.table}", []).to_pylist()[0]
        if not got["n"]:
            return None
        present = [(is_tag, k) for i, (is_tag, k, _) in enumerate(keys) if got[f"k{i}"]]
        return dataclasses.replace(
            schema,
            tag_keys=tuple(k for is_tag, k in present if is_tag),
            field_types={k: schema.field_types[k] for is_tag, k in present if not is_tag},
        )

    def default_rp(self, db: str) -> str:
        for rp in self.store.retention_policies(db):
            if rp.default:
                return rp.name
        return DEFAULT_RP

    def resolve_sources(
        self,
        sources: Sequence[A.Measurement],
        database: str | None = None,
        *,
        check_rp: bool = False,
    ) -> list[MeasurementSchema]:
        """Schemas of the measurements named or matched, sorted by name, each once."""
        out: dict[tuple[str, str, str], MeasurementSchema] = {}
        for src in sources:
            db = self.require_database(src.database or database)
            rp = src.rp or self.default_rp(db)
            if (
                check_rp
                and src.rp
                and src.rp not in {p.name for p in self.store.retention_policies(db)}
            ):
                raise StatementError(f"retention policy not found: {src.rp}")
            if src.regex is not None:
                rx = re.compile(src.regex)
                names = [m for m in self.store.measurements(db, rp) if rx.search(m)]
            else:
                names = [src.name] if src.name is not None else []
            for name in names:
                schema = self.store.schema(db, rp, name)
                if schema is not None:
                    out[(db, rp, name)] = self.scoped(schema)
        return [out[k] for k in sorted(out, key=lambda k: (k[2], k[0], k[1]))]
