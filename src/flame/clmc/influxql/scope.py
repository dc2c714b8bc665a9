"""Who may run which statements, and which rows of the shared database a tenant reads (issue 11).

An `Access` describes a caller that is not the operator (the operator runs with none): the
databases its tenant owns (`<tenant>` and `<tenant>_<anything>`), the shared platform database
(`flame`, where the service routers and the SFEMC report) that it may read but never change,
and the `RowScope` narrowing that database to the tenant's rows.

* `authorize(statements, db, access)` checks a whole request before any statement runs, so a
  request with one forbidden statement runs none (the API answers 403, as InfluxDB does).
  Plain and chunked queries both go through it (`engine.execute`, `engine.execute_chunked`).
* The compiler applies the `RowScope` to every scan of the shared database: the measurement's
  table is replaced by a filtered relation (`Context.scoped`), so SELECTs of any shape, regex
  sources, SHOW MEASUREMENTS / TAG KEYS / TAG VALUES / FIELD KEYS / SERIES and chunked results
  all read the same rows, and no statement can name the unfiltered table.

Which rows a tenant sees in the shared database: where the measurement has an `fqdn` tag, rows
whose FQDN lies in one of its zones (a name delegated to it, or a name under one, unless a more
specific delegation gives that subdomain to someone else, as DNS zone cuts); where it has a
`tenant` tag, rows of its own tenant id; both when it has both; nothing of a measurement with
neither. Without a `RowScope` (delegations unknown) it sees no rows at all: fail closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.dialect import Dialect
from flame.clmc.store.base import MeasurementSchema
from flame.common.errors import PermissionDenied

__all__ = [
    "FQDN_TAG",
    "TENANT_TAG",
    "Access",
    "RowScope",
    "Unauthorized",
    "Zone",
    "authorize",
    "covers",
]

FQDN_TAG = "fqdn"
TENANT_TAG = "tenant"

# Names and tenant ids go into SQL as literals: only characters that need no escaping in any
# store's SQL or in a regex (a name with anything else is refused, never quoted).
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_TENANT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class Unauthorized(PermissionDenied):
    """The request asks for something its caller may not do; nothing of it ran (HTTP 403)."""

    code = "unauthorized"


def covers(name: str, fqdn: str) -> bool:
    """Whether the delegation of `name` covers `fqdn` (the name itself or one under it)."""
    return fqdn == name or fqdn.endswith("." + name)


@dataclass(frozen=True, slots=True)
class Zone:
    """A delegated name and every name under it, minus `cuts` (names under it that a more
    specific delegation gives to someone else)."""

    name: str
    cuts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a lower-case DNS name: {self.name!r}")
        for cut in self.cuts:
            if not _NAME.fullmatch(cut) or not cut.endswith("." + self.name):
                raise ValueError(f"{cut!r} is not a name under {self.name!r}")

    def holds(self, fqdn: str) -> bool:
        return covers(self.name, fqdn) and not any(covers(c, fqdn) for c in self.cuts)


@dataclass(frozen=True, slots=True)
class RowScope:
    """The rows of the shared database that one tenant may read."""

    tenant: str
    zones: frozenset[Zone] = frozenset()

    def __post_init__(self) -> None:
        if not _TENANT.fullmatch(self.tenant):
            raise ValueError(f"not a tenant id: {self.tenant!r}")

    def sees_fqdn(self, fqdn: str) -> bool:
        return any(zone.holds(fqdn) for zone in self.zones)

    def predicate(self, schema: MeasurementSchema, dialect: Dialect) -> str:
        """SQL over `schema`'s table: true for the rows this tenant may read."""
        has_fqdn = FQDN_TAG in schema.tag_keys
        has_tenant = TENANT_TAG in schema.tag_keys
        if not (has_fqdn or has_tenant):
            return "FALSE"
        parts = []
        if has_fqdn:
            parts.append(self._fqdn_predicate(schema.tag_column(FQDN_TAG), dialect))
        if has_tenant:
            parts.append(f"({schema.tag_column(TENANT_TAG)} = '{self.tenant}')")
        return "(" + " AND ".join(parts) + ")"

    def _fqdn_predicate(self, column: str, dialect: Dialect) -> str:
        if not self.zones:
            return "FALSE"
        clauses = []
        for zone in sorted(self.zones, key=lambda z: z.name):
            inside = _covered(column, zone.name, dialect)
            if zone.cuts:
                cuts = " OR ".join(_covered(column, c, dialect) for c in sorted(zone.cuts))
                inside = f"({inside} AND NOT ({cuts}))"
            clauses.append(inside)
        # A row without the tag (NULL) matches nothing; COALESCE keeps NOT from making it NULL.
        return "COALESCE(" + " OR ".join(clauses) + ", FALSE)"


def _covered(column: str, name: str, dialect: Dialect) -> str:
    """SQL: `column` is `name` or a name under it. Names hold only [a-z0-9._-] (checked), so
    they are safe as literals; LIKE's `_` matches any character, so a name with one is checked
    again exactly (the regex runs only on the rows LIKE lets through)."""
    under = f"{column} LIKE '%.{name}'"
    if "_" in name:
        exact = dialect.regex_match(column, "'[.]" + name.replace(".", "[.]") + "$'")
        under = f"({under} AND {exact})"
    return f"({column} = '{name}' OR {under})"


@dataclass(frozen=True, slots=True)
class Access:
    """What a caller other than the operator may do with queries.

    `tenant` owns its databases (None: a router, which owns none); `shared` is the platform
    database, readable (if `read_shared`) through `rows` and never changeable."""

    user: str
    tenant: str | None
    shared: str = "flame"
    rows: RowScope | None = None
    read_shared: bool = True

    def owns(self, database: str) -> bool:
        if self.tenant is None or database == self.shared:
            return False  # not even a tenant whose id is the shared database's name
        return database == self.tenant or database.startswith(self.tenant + "_")

    def may_read(self, database: str) -> bool:
        return self.owns(database) or (self.read_shared and database == self.shared)

    def may_change(self, database: str) -> bool:
        return self.owns(database)

    def scopes(self, database: str) -> bool:
        """Whether reads of `database` are narrowed to `rows`."""
        return database == self.shared

    def deny(self, verb: str, database: str) -> Unauthorized:
        return Unauthorized(
            f'error authorizing query: "{self.user}" user is not authorized to {verb} '
            f'database "{database}"',
            database=database,
        )


_READ = "read"
_CHANGE = "write to, create or drop"


def _sources(sources: Iterable[A.Measurement], default: str | None) -> list[str | None]:
    return [s.database or default for s in sources]


def _needs(stmt: A.Statement, db: str | None) -> list[tuple[str, str | None]] | None:
    """(what, database) pairs a statement needs (a None database fails in the statement);
    None for a kind of statement this policy does not know, which no caller but the operator
    may run."""
    match stmt:
        case A.SelectStatement(sources=sources):
            return [(_READ, d) for d in _sources(sources, db)]
        case A.ShowDatabases():
            return []
        case A.ShowMeasurements(database=on):
            return [(_READ, on or db)]
        case (
            A.ShowTagKeys(database=on, sources=sources)
            | A.ShowFieldKeys(database=on, sources=sources)
            | A.ShowTagValues(database=on, sources=sources)
            | A.ShowSeries(database=on, sources=sources)
        ):
            return [(_READ, d) for d in [on or db, *_sources(sources, on or db)]]
        case A.ShowRetentionPolicies(database=on):
            return [(_READ, on or db)]
        case A.CreateDatabase(name=name) | A.DropDatabase(name=name):
            return [(_CHANGE, name)]
        case A.CreateRetentionPolicy(database=on):
            return [(_CHANGE, on)]
        case A.DropMeasurement():
            return [(_CHANGE, db)]
        case A.Delete(sources=sources) | A.DropSeries(sources=sources):
            return [(_CHANGE, d) for d in [db, *_sources(sources, db)]]
    return None


def authorize(statements: Sequence[A.Statement], db: str | None, access: Access | None) -> None:
    """Raise `Unauthorized` unless `access` allows every statement (None allows everything)."""
    if access is None:
        return
    for stmt in statements:
        needs = _needs(stmt, db)
        if needs is None:
            raise Unauthorized(
                f'error authorizing query: "{access.user}" user is not authorized to run '
                f"{type(stmt).__name__} statements"
            )
        for verb, database in needs:
            if database is None:
                continue
            allowed = access.may_read(database) if verb == _READ else access.may_change(database)
            if not allowed:
                raise access.deny(verb, database)
