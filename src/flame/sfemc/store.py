"""SFEMC control state: SQLite (WAL) by default, PostgreSQL by URL (psycopg 3).

What is kept, so that a restarted SFEMC resumes where it was (the reconciler's progress lives
outside the process):

* `sfemc_services`: each deployed chain (tenant, instance, its service model, its template);
* `sfemc_endpoints`: each SFE with its spec, desired state and current lifecycle state;
* `sfemc_transitions`: the history of every transition (the configuration events);
* `sfemc_alerts` / `sfemc_policy_clock`: alert events seen (duplicates) and the time of the
  last one applied per policy (out-of-order events).

`open_store("sqlite:///path")`, `open_store("/path/to.db")` or
`open_store("postgresql://user@host:port/db")`. SQL is written once with `?` placeholders and
translated for psycopg. Calls are short and synchronous; one lock serialises them, so the
asyncio loop and the HTTP handlers can share one store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError
from flame.sfemc.events import ConfigEvent
from flame.sfemc.lifecycle import LifecycleState, StaleState
from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec

__all__ = [
    "ABSENT",
    "EndpointRecord",
    "ServiceRecord",
    "SfemcStore",
    "Transition",
    "decode_spec",
    "encode_spec",
    "open_store",
]

ABSENT = "absent"  # desired state of an endpoint being undeployed: unplace, then forget

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sfemc_services (
        sfc TEXT PRIMARY KEY, tenant TEXT NOT NULL, sfci TEXT NOT NULL,
        model TEXT NOT NULL, template TEXT NOT NULL, generation INTEGER NOT NULL,
        updated DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sfemc_endpoints (
        sfe TEXT PRIMARY KEY, tenant TEXT NOT NULL, sfc TEXT NOT NULL, sfci TEXT NOT NULL,
        sf TEXT NOT NULL, cluster TEXT NOT NULL, fqdn TEXT NOT NULL, spec TEXT NOT NULL,
        desired TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
        since DOUBLE PRECISION NOT NULL, placed_spec TEXT)""",
    """CREATE TABLE IF NOT EXISTS sfemc_transitions (
        seq {serial}, sfe TEXT NOT NULL, cluster TEXT NOT NULL, sfc TEXT NOT NULL,
        sfci TEXT NOT NULL, sf TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL, duration DOUBLE PRECISION NOT NULL, reason TEXT)""",
    "CREATE INDEX IF NOT EXISTS sfemc_transitions_sfe ON sfemc_transitions (sfe, seq)",
    """CREATE TABLE IF NOT EXISTS sfemc_alerts (
        id TEXT PRIMARY KEY, sfc TEXT NOT NULL, alert TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL,
        received DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sfemc_policy_clock (
        sfc TEXT NOT NULL, policy TEXT NOT NULL, last_time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (sfc, policy))""",
]
_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_ENDPOINT_COLUMNS = (
    "sfe, tenant, sfc, sfci, sf, cluster, fqdn, spec, desired, state, reason, since, placed_spec"
)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    sfe: str
    tenant: str
    sfc: str
    sfci: str
    sf: str
    cluster: str
    fqdn: str
    spec: EndpointSpec
    desired: str  # a stable LifecycleState value, or ABSENT
    state: LifecycleState
    reason: str | None
    since: float
    placed_spec: str | None = None  # hash of the spec the VIM was given (a change replaces it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sfe": self.sfe,
            "tenant": self.tenant,
            "sfc": self.sfc,
            "sfci": self.sfci,
            "sf": self.sf,
            "cluster": self.cluster,
            "fqdn": self.fqdn,
            "desired": self.desired,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    sfc: str
    tenant: str
    sfci: str
    model: dict[str, Any]  # ServiceModel.to_dict()
    template: dict[str, str]  # file name -> text, as submitted
    generation: int
    updated: float


@dataclass(frozen=True, slots=True)
class Transition:
    seq: int
    event: ConfigEvent


def encode_spec(spec: EndpointSpec) -> str:
    return json.dumps(
        {
            "sfe": spec.sfe,
            "tenant": spec.tenant,
            "sfc": spec.sfc,
            "sfci": spec.sfci,
            "sf": spec.sf,
            "cluster": spec.cluster,
            "fqdn": spec.fqdn,
            "image": spec.image,
            "ports": [[p.name, p.container_port, p.protocol] for p in spec.ports],
            "environment": dict(spec.environment),
            "health": None
            if spec.health is None
            else [
                spec.health.path,
                spec.health.port,
                spec.health.interval_s,
                spec.health.timeout_s,
                spec.health.retries,
            ],
            "cpus": spec.cpus,
            "memory_bytes": spec.memory_bytes,
            "disk_bytes": spec.disk_bytes,
        },
        sort_keys=True,
    )


def decode_spec(text: str) -> EndpointSpec:
    d = json.loads(text)
    health = d["health"]
    return EndpointSpec(
        sfe=d["sfe"],
        tenant=d["tenant"],
        sfc=d["sfc"],
        sfci=d["sfci"],
        sf=d["sf"],
        cluster=d["cluster"],
        fqdn=d["fqdn"],
        image=d["image"],
        ports=tuple(PortSpec(n, int(p), proto) for n, p, proto in d["ports"]),
        environment=dict(d["environment"]),
        health=None if health is None else HealthSpec(*health),
        cpus=d["cpus"],
        memory_bytes=d["memory_bytes"],
        disk_bytes=d["disk_bytes"],
    )


class SfemcStore:
    """The SFEMC's tables on one connection (SQLite or PostgreSQL)."""

    def __init__(self, connection: Any, dialect: str, url: str) -> None:
        self._conn = connection
        self.dialect = dialect
        self.url = url
        self._lock = threading.RLock()
        with self._tx() as cur:
            for ddl in _SCHEMA:
                cur.execute(ddl.format(serial=_SERIAL[dialect]))

    # -- plumbing -----------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield _Cursor(cur, self)
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as cur:
            return cur.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- services -----------------------------------------------------------------------------

    def put_service(self, service: ServiceRecord) -> None:
        self._rows(
            """INSERT INTO sfemc_services (sfc, tenant, sfci, model, template, generation, updated)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (sfc) DO UPDATE SET tenant = excluded.tenant, sfci = excluded.sfci,
                 model = excluded.model, template = excluded.template,
                 generation = excluded.generation, updated = excluded.updated""",
            (
                service.sfc,
                service.tenant,
                service.sfci,
                json.dumps(service.model),
                json.dumps(service.template),
                service.generation,
                service.updated,
            ),
        )

    def service(self, sfc: str) -> ServiceRecord | None:
        rows = self._rows(
            "SELECT sfc, tenant, sfci, model, template, generation, updated FROM sfemc_services WHERE sfc = ?",
            (sfc,),
        )
        return _service(rows[0]) if rows else None

    def services(self) -> list[ServiceRecord]:
        rows = self._rows(
            "SELECT sfc, tenant, sfci, model, template, generation, updated FROM sfemc_services ORDER BY sfc"
        )
        return [_service(r) for r in rows]

    def delete_service(self, sfc: str) -> None:
        self._rows("DELETE FROM sfemc_services WHERE sfc = ?", (sfc,))

    # -- endpoints ----------------------------------------------------------------------------

    def upsert_endpoint(self, spec: EndpointSpec, desired: str, now: float) -> None:
        """Create the endpoint (unplaced) or change its spec and desired state; its lifecycle
        state is only ever changed by `record_transition`."""
        self._rows(
            f"""INSERT INTO sfemc_endpoints ({_ENDPOINT_COLUMNS})
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL)
               ON CONFLICT (sfe) DO UPDATE SET spec = excluded.spec, desired = excluded.desired,
                 fqdn = excluded.fqdn""",
            (
                spec.sfe,
                spec.tenant,
                spec.sfc,
                spec.sfci,
                spec.sf,
                spec.cluster,
                spec.fqdn,
                encode_spec(spec),
                desired,
                LifecycleState.UNPLACED.value,
                now,
            ),
        )

    def set_desired(self, sfe: str, desired: str) -> bool:
        with self._tx() as cur:
            cur.execute("UPDATE sfemc_endpoints SET desired = ? WHERE sfe = ?", (desired, sfe))
            return cur.rowcount > 0

    def set_reason(self, sfe: str, reason: str | None) -> None:
        """Why the endpoint is not where it should be yet (a retried error), without a
        transition: shown by the API while the reconciler keeps trying."""
        self._rows("UPDATE sfemc_endpoints SET reason = ? WHERE sfe = ?", (reason, sfe))

    def set_placed_spec(self, sfe: str, spec_hash: str | None) -> None:
        self._rows("UPDATE sfemc_endpoints SET placed_spec = ? WHERE sfe = ?", (spec_hash, sfe))

    def endpoint(self, sfe: str) -> EndpointRecord | None:
        rows = self._rows(f"SELECT {_ENDPOINT_COLUMNS} FROM sfemc_endpoints WHERE sfe = ?", (sfe,))
        return _endpoint(rows[0]) if rows else None

    def endpoints(self, sfc: str | None = None) -> list[EndpointRecord]:
        if sfc is None:
            rows = self._rows(f"SELECT {_ENDPOINT_COLUMNS} FROM sfemc_endpoints ORDER BY sfe")
        else:
            rows = self._rows(
                f"SELECT {_ENDPOINT_COLUMNS} FROM sfemc_endpoints WHERE sfc = ? ORDER BY sfe",
                (sfc,),
            )
        return [_endpoint(r) for r in rows]

    def forget_endpoint(self, sfe: str) -> bool:
        """Delete an unplaced endpoint whose desired state is absent (undeploy finished)."""
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM sfemc_endpoints WHERE sfe = ? AND state = ? AND desired = ?",
                (sfe, LifecycleState.UNPLACED.value, ABSENT),
            )
            return cur.rowcount > 0

    def record_transition(
        self, sfe: str, src: LifecycleState, dst: LifecycleState, reason: str | None, now: float
    ) -> ConfigEvent:
        with self._tx() as cur:
            rows = cur.execute(
                "SELECT cluster, sfc, sfci, sf, state, since, tenant FROM sfemc_endpoints "
                "WHERE sfe = ?",
                (sfe,),
            )
            if not rows:
                raise StaleState(f"endpoint '{sfe}' does not exist", sfe=sfe)
            cluster, sfc, sfci, sf, state, since, tenant = rows[0]
            if state != src.value:
                raise StaleState(
                    f"endpoint '{sfe}' is {state}, not {src}; someone moved it first", sfe=sfe
                )
            cur.execute(
                "UPDATE sfemc_endpoints SET state = ?, reason = ?, since = ? WHERE sfe = ? AND state = ?",
                (dst.value, reason, now, sfe, src.value),
            )
            event = ConfigEvent(
                cluster=cluster,
                sfc=sfc,
                sfci=sfci,
                sf=sf,
                sfe=sfe,
                from_state=src.value,
                to_state=dst.value,
                time=now,
                duration_s=max(0.0, now - float(since)),
                reason=reason,
                tenant=tenant,
            )
            cur.execute(
                """INSERT INTO sfemc_transitions
                   (sfe, cluster, sfc, sfci, sf, from_state, to_state, time, duration, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (sfe, cluster, sfc, sfci, sf, src.value, dst.value, now, event.duration_s, reason),
            )
            return event

    def history(self, sfe: str | None = None, sfc: str | None = None) -> list[Transition]:
        where, params = "", ()  # type: tuple[str, tuple[str, ...]]
        if sfe is not None:
            where, params = "WHERE sfe = ?", (sfe,)
        elif sfc is not None:
            where, params = "WHERE sfc = ?", (sfc,)
        rows = self._rows(
            f"""SELECT seq, cluster, sfc, sfci, sf, sfe, from_state, to_state, time, duration,
                       reason FROM sfemc_transitions {where} ORDER BY seq""",
            params,
        )
        return [
            Transition(
                int(r[0]),
                ConfigEvent(
                    r[1], r[2], r[3], r[4], r[5], r[6], r[7], float(r[8]), float(r[9]), r[10]
                ),
            )
            for r in rows
        ]

    # -- alert events (SFEMC-3/4) -------------------------------------------------------------

    def alert_seen(self, event_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM sfemc_alerts WHERE id = ?", (event_id,)))

    def record_alert(
        self,
        event_id: str,
        sfc: str,
        alert: str,
        time: float,
        decision: str,
        reason: str,
        now: float,
    ) -> bool:
        """False if an event with this id was already recorded (a duplicate)."""
        with self._tx() as cur:
            cur.execute(
                """INSERT INTO sfemc_alerts (id, sfc, alert, time, decision, reason, received)
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING""",
                (event_id, sfc, alert, time, decision, reason, now),
            )
            return cur.rowcount > 0

    def policy_clock(self, sfc: str, policy: str) -> float | None:
        rows = self._rows(
            "SELECT last_time FROM sfemc_policy_clock WHERE sfc = ? AND policy = ?", (sfc, policy)
        )
        return float(rows[0][0]) if rows else None

    def set_policy_clock(self, sfc: str, policy: str, time: float) -> None:
        self._rows(
            """INSERT INTO sfemc_policy_clock (sfc, policy, last_time) VALUES (?, ?, ?)
               ON CONFLICT (sfc, policy) DO UPDATE SET last_time = excluded.last_time""",
            (sfc, policy, time),
        )

    def clear_policy_clocks(self, sfc: str) -> None:
        self._rows("DELETE FROM sfemc_policy_clock WHERE sfc = ?", (sfc,))


class _Cursor:
    def __init__(self, cur: Any, store: SfemcStore) -> None:
        self._cur = cur
        self._store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self._store._sql(sql), tuple(params))
        if self._cur.description is None:
            return []
        return [tuple(r) for r in self._cur.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


def _service(r: Sequence[Any]) -> ServiceRecord:
    return ServiceRecord(
        sfc=r[0],
        tenant=r[1],
        sfci=r[2],
        model=json.loads(r[3]),
        template=json.loads(r[4]),
        generation=int(r[5]),
        updated=float(r[6]),
    )


def _endpoint(r: Sequence[Any]) -> EndpointRecord:
    return EndpointRecord(
        sfe=r[0],
        tenant=r[1],
        sfc=r[2],
        sfci=r[3],
        sf=r[4],
        cluster=r[5],
        fqdn=r[6],
        spec=decode_spec(r[7]),
        desired=r[8],
        state=LifecycleState(r[9]),
        reason=r[10],
        since=float(r[11]),
        placed_spec=r[12],
    )


def open_store(url: str | Path) -> SfemcStore:
    """A store for `url`: a SQLite path or `sqlite:///path`, or `postgresql://...`."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: PLC0415 - optional at import time, needed only for PostgreSQL
        except ImportError:
            raise ConfigError(
                "PostgreSQL store needs psycopg 3: pip install 'psycopg[binary]'", url=text
            ) from None
        try:
            pg: Any = psycopg.connect(text, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ConfigError(
                f"cannot connect to the SFEMC database {_redact(text)}: {str(exc).strip()}",
                url=_redact(text),
            ) from None
        return SfemcStore(pg, "postgresql", text)
    path = Path(text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text)
    if text.startswith(("sqlite://", "http://", "https://")) and not text.startswith("sqlite:///"):
        raise ConfigError(
            f"unsupported store URL {text!r}: use a file path, sqlite:///PATH or postgresql://..."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash (our kill -9), fsync at checkpoints.
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the SFEMC database {path}: {exc}", path=str(path)) from None
    return SfemcStore(conn, "sqlite", str(path))


def _redact(url: str) -> str:
    """Hide a password in a connection URL before it reaches a message or a log."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    user = creds.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"
