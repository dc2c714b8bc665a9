"""The certificate store of the PCE (`flame.sfr.certs`): certificates with sealed keys, TLS
options and per-SR bundle versions, in a SQLite file of their own beside the PCE's database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.pki import ChainInfo

__all__ = ["CertRecord", "CertStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
    fqdn TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    tenant TEXT,
    chain TEXT NOT NULL,
    sealed_key BLOB NOT NULL,
    info TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tls_options (fqdn TEXT PRIMARY KEY, redirect_http INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cert_versions (
    sr TEXT PRIMARY KEY, version INTEGER NOT NULL, digest TEXT NOT NULL
);
"""


def _info_from(data: Mapping[str, Any]) -> ChainInfo:
    return ChainInfo(
        names=tuple(data["names"]),
        not_before=float(data["not_before"]),
        not_after=float(data["not_after"]),
        fingerprint=str(data["fingerprint"]),
        serial=str(data["serial"]),
        subject=str(data["subject"]),
        issuer=str(data["issuer"]),
        certificates=int(data["certificates"]),
    )


def _info_json(info: ChainInfo) -> str:
    return json.dumps(
        {
            "names": list(info.names),
            "not_before": info.not_before,
            "not_after": info.not_after,
            "fingerprint": info.fingerprint,
            "serial": info.serial,
            "subject": info.subject,
            "issuer": info.issuer,
            "certificates": info.certificates,
        }
    )


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One FQDN's certificate: the chain in clear, the key sealed (never in `repr`)."""

    fqdn: str
    source: str  # MANUAL, PLATFORM or ACME
    tenant: str | None  # who owned the FQDN when it was stored (None: the operator)
    chain_pem: str
    sealed_key: bytes
    info: ChainInfo
    updated: float

    def __repr__(self) -> str:
        return f"CertRecord({self.fqdn!r}, {self.source}, {self.info.fingerprint[:16]})"

    def public(self, *, redirect_http: bool, with_chain: bool = True) -> dict[str, Any]:
        """What a tenant may read: metadata and the chain, never the key."""
        doc: dict[str, Any] = {
            "fqdn": self.fqdn,
            "source": self.source,
            "tenant": self.tenant,
            "redirect_http": redirect_http,
            **self.info.to_dict(),
            "updated": self.updated,
        }
        if with_chain:
            doc["chain"] = self.chain_pem
        return doc


class CertStore:
    """The SQLite file holding certificates, TLS options and per-SR bundle versions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('generation', ?)", (uuid.uuid4().hex,)
                )
        self.path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def load(
        self,
    ) -> tuple[str, dict[str, CertRecord], dict[str, bool], dict[str, tuple[int, str]]]:
        with self._lock:
            db = self._db
            generation = str(
                db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
            )
            records = {
                fqdn: CertRecord(
                    fqdn, source, tenant, chain, bytes(sealed), _info_from(json.loads(info)), upd
                )
                for fqdn, source, tenant, chain, sealed, info, upd in db.execute(
                    "SELECT fqdn, source, tenant, chain, sealed_key, info, updated FROM certs"
                )
            }
            options = {
                fqdn: bool(on)
                for fqdn, on in db.execute("SELECT fqdn, redirect_http FROM tls_options")
            }
            versions = {
                sr: (int(v), str(d))
                for sr, v, d in db.execute("SELECT sr, version, digest FROM cert_versions")
            }
        return generation, records, options, versions

    def write(
        self,
        *,
        put: Iterable[CertRecord] = (),
        delete: Iterable[str] = (),
        options: Mapping[str, bool] | None = None,
        versions: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        with self._lock, self._transaction() as db:
            for fqdn in delete:
                db.execute("DELETE FROM certs WHERE fqdn = ?", (fqdn,))
            for r in put:
                db.execute(
                    "INSERT OR REPLACE INTO certs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.fqdn,
                        r.source,
                        r.tenant,
                        r.chain_pem,
                        r.sealed_key,
                        _info_json(r.info),
                        r.updated,
                    ),
                )
            for fqdn, on in (options or {}).items():
                db.execute("INSERT OR REPLACE INTO tls_options VALUES (?, ?)", (fqdn, int(on)))
            for sr, (version, digest) in (versions or {}).items():
                db.execute(
                    "INSERT OR REPLACE INTO cert_versions VALUES (?, ?, ?)", (sr, version, digest)
                )
