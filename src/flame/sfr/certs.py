"""Content certificates at the PCE (SFR-22, SFR-23): kept, checked, issued, renewed, distributed.

`CertManager` is what `PceService` asks; the service checks who may act on which FQDN (the
registry's delegations) and calls it with the facts it needs: which FQDNs each SR's table
routes, and who owns a name now.

* **Manual (SFR-22).** A tenant uploads a chain and key for an FQDN delegated to it. Checked
  (`flame.common.pki.inspect_chain`): PEM, key matches the leaf, chain in order, valid now, and
  a subject alternative name covers the FQDN. The key is sealed with AES-256-GCM (the FQDN as
  associated data) under a key kept in its own 0600 file, outside the database.
* **Automatic (SFR-23).** Every FQDN that some SR routes, is delegated to a tenant, and has no
  manual certificate covering it gets one from the platform CA (`PlatformCA`, ECDSA P-256,
  `lifetime_days`), renewed once less than `renew_fraction` of its life is left (checked on
  every lease tick of the active PCE, and on demand: `renew`). Names no longer routed or no
  longer delegated lose theirs.
* **Ownership follows delegations.** A certificate belongs to the tenant owning its FQDN when
  it was stored; when that changes (undelegation, delegation to another tenant) it is
  removed, so it leaves every SR with the next bundle. An SR is only given names the
  certificate's owner owns: a tenant's certificate that also names another tenant's FQDN is
  never served for that FQDN.
* **Distribution.** Each SR gets the certificates (with their keys) of the FQDNs its table
  routes, as a versioned bundle it long-polls (`GET /v1/certs/sr/{sr}?since=V`), like its
  table: a version grows only when the bundle's content (names, fingerprints, redirects)
  changes. Versions persist with a digest, so a restarted or standby PCE continues them.

Persistence is additive to the PCE's database: a SQLite file of its own (`certs.sqlite3`
beside the PCE's state, shared by a standby on the same host), written before anything is
published. Nothing here logs a key; tenants' answers (`public`) never hold one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.errors import UserError
from flame.common.pki import ChainInfo, PlatformCA, SecretBox, inspect_chain
from flame.sfr.registry import Conflict, NotFound

__all__ = ["CertBundle", "CertManager", "CertRecord", "CertStore", "open_cert_manager"]

log = logging.getLogger("flame.sfr.certs")

MANUAL = "manual"
PLATFORM = "platform"

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
    source: str  # MANUAL or PLATFORM
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


@dataclass(slots=True)
class CertBundle:
    """One SR's certificates as distributed: version, digest, and the JSON made on demand."""

    sr: str
    version: int
    digest: str
    records: tuple[tuple[CertRecord, tuple[str, ...], bool], ...]  # record, names, redirect
    _body: bytes | None = None


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


OwnerOf = Callable[[str], str | None]


class CertManager:
    """Certificates by FQDN, their automatic issuance and renewal, and per-SR bundles."""

    def __init__(
        self,
        store: CertStore,
        box: SecretBox,
        ca: PlatformCA,
        *,
        lifetime_days: float = 30.0,
        renew_fraction: float = 1 / 3,
        automatic: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self.store = store
        self.box = box
        self.ca = ca
        self.lifetime_days = lifetime_days
        self.renew_fraction = renew_fraction
        self.automatic = automatic
        self._clock = clock
        self.generation = ""
        self.records: dict[str, CertRecord] = {}
        self.redirects: dict[str, bool] = {}
        self._versions: dict[str, tuple[int, str]] = {}
        self.bundles: dict[str, CertBundle] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self.issued = 0
        self.renewed = 0
        self.load()

    def load(self) -> None:
        """(Re)read the store: at start, and when a standby PCE takes over."""
        self.generation, self.records, self.redirects, self._versions = self.store.load()
        self.bundles = {}

    # -- what tenants do (the service has checked ownership) ----------------------------------

    def get(self, fqdn: str) -> CertRecord:
        record = self.records.get(fqdn)
        if record is None:
            raise NotFound(
                f"no certificate for '{fqdn}' (an FQDN gets one from the platform once an SR "
                "routes it; upload your own with PUT /v1/certs/{fqdn})",
                fqdn=fqdn,
            )
        return record

    def put_manual(self, fqdn: str, owner: str | None, chain_pem: str, key_pem: str) -> CertRecord:
        """Check and store an uploaded chain + key for `fqdn` (UserError naming the problem)."""
        info = inspect_chain(chain_pem, key_pem)
        if not info.covers(fqdn):
            raise UserError(
                f"the certificate does not cover '{fqdn}': it names {', '.join(info.names)}",
                fqdn=fqdn,
            )
        record = CertRecord(
            fqdn=fqdn,
            source=MANUAL,
            tenant=owner,
            chain_pem=_normalise_pem(chain_pem),
            sealed_key=self.box.seal(key_pem.encode(), aad=fqdn.encode()),
            info=info,
            updated=self._clock(),
        )
        self.store.write(put=[record])
        self.records[fqdn] = record
        log.info(
            "certificate for %s uploaded (tenant %s, names %s, valid until %s, sha256 %s)",
            fqdn,
            owner or "-",
            ", ".join(info.names),
            info.to_dict()["not_after"],
            info.fingerprint[:16],
        )
        return record

    def delete_manual(self, fqdn: str) -> CertRecord:
        record = self.get(fqdn)
        if record.source != MANUAL:
            raise Conflict(
                f"the certificate of '{fqdn}' is the platform's (automatic); it goes when the "
                "FQDN is no longer routed or delegated. Upload your own to replace it.",
                fqdn=fqdn,
            )
        self.store.write(delete=[fqdn])
        del self.records[fqdn]
        log.info("certificate for %s deleted (tenant %s)", fqdn, record.tenant or "-")
        return record

    def set_redirect(self, fqdn: str, on: bool) -> None:
        if self.redirects.get(fqdn, False) == on:
            return
        self.store.write(options={fqdn: on})
        self.redirects[fqdn] = on

    def renew(self, fqdn: str, owner: str | None) -> CertRecord:
        """Issue the platform certificate of `fqdn` again now."""
        record = self.get(fqdn)
        if record.source != PLATFORM:
            raise Conflict(
                f"'{fqdn}' has an uploaded certificate: upload the renewed one "
                "(PUT /v1/certs/{fqdn})",
                fqdn=fqdn,
            )
        new = self._issue(fqdn, owner)
        self.store.write(put=[new])
        self.records[fqdn] = new
        self.renewed += 1
        return new

    def ca_pem(self) -> str:
        return self.ca.cert_pem

    # -- keeping up with routes and delegations -------------------------------------------------

    def sync(self, routed: Mapping[str, Iterable[str]], owner_of: OwnerOf) -> dict[str, int]:
        """Bring certificates and bundles in line with the tables (`routed`: SR -> FQDNs its
        table routes) and the delegations (`owner_of`); returns SRs with new bundle versions.

        Removes certificates whose FQDN changed hands, issues missing and due platform
        certificates, drops platform certificates nobody routes, persists, then publishes."""
        routed_sets = {sr: frozenset(fqdns) for sr, fqdns in routed.items()}
        everything = frozenset().union(*routed_sets.values()) if routed_sets else frozenset()
        now = self._clock()
        records = dict(self.records)
        put: list[CertRecord] = []
        delete: list[str] = []
        for fqdn, record in list(records.items()):
            owner = owner_of(fqdn)
            gone = owner != record.tenant
            unused = record.source == PLATFORM and (fqdn not in everything or owner is None)
            if gone or unused:
                del records[fqdn]
                delete.append(fqdn)
                log.info(
                    "certificate for %s removed (%s)",
                    fqdn,
                    "the FQDN changed hands" if gone else "no SR routes it any more",
                )
        if self.automatic:
            for fqdn in sorted(everything):
                owner = owner_of(fqdn)
                if owner is None:
                    continue  # the operator's own names: only certificates it uploads
                current = records.get(fqdn)
                if current is not None and current.source == MANUAL:
                    continue
                if current is None and self._manual_cover(records, fqdn, owner) is not None:
                    continue
                if current is not None and not self._due(current, now):
                    continue
                new = self._issue(fqdn, owner)
                records[fqdn] = new
                put.append(new)
                if current is None:
                    self.issued += 1
                else:
                    self.renewed += 1
        bundles = {
            sr: self._bundle(sr, fqdns, records, owner_of) for sr, fqdns in routed_sets.items()
        }
        changed: dict[str, tuple[int, str]] = {}
        # A new version is above every version any SR ever had: it only grows, per SR.
        next_version = max((v for v, _ in self._versions.values()), default=0) + 1
        for sr, bundle in bundles.items():
            version, digest = self._versions.get(sr, (0, ""))
            if bundle.digest != digest:
                version = next_version
                changed[sr] = (version, bundle.digest)
            bundle.version = version
        if put or delete or changed:
            self.store.write(put=put, delete=delete, versions=changed)
        self.records = records
        self._versions.update(changed)
        self.bundles = bundles
        for sr in changed:
            event = self._waiters.pop(sr, None)
            if event is not None:
                event.set()
        if changed:
            log.info(
                "certificate bundles: %s",
                ", ".join(f"{sr} v{v}" for sr, (v, _) in sorted(changed.items())),
            )
        return {sr: v for sr, (v, _) in changed.items()}

    def due(self) -> bool:
        """Does some platform certificate need renewing now?"""
        now = self._clock()
        return any(r.source == PLATFORM and self._due(r, now) for r in self.records.values())

    def _due(self, record: CertRecord, now: float) -> bool:
        life = record.info.not_after - record.info.not_before
        return record.info.not_after - now <= life * self.renew_fraction

    def _manual_cover(
        self, records: Mapping[str, CertRecord], fqdn: str, owner: str | None
    ) -> CertRecord | None:
        """An uploaded certificate of the same owner whose names cover `fqdn` (a wildcard)."""
        for record in records.values():
            if record.source == MANUAL and record.tenant == owner and record.info.covers(fqdn):
                return record
        return None

    def _issue(self, fqdn: str, owner: str | None) -> CertRecord:
        issued = self.ca.issue([fqdn], days=self.lifetime_days)
        info = inspect_chain(issued.chain_pem)
        log.info(
            "platform certificate issued for %s (tenant %s, valid until %s, sha256 %s)",
            fqdn,
            owner or "-",
            info.to_dict()["not_after"],
            info.fingerprint[:16],
        )
        return CertRecord(
            fqdn=fqdn,
            source=PLATFORM,
            tenant=owner,
            chain_pem=issued.chain_pem,
            sealed_key=self.box.seal(issued.key_pem.encode(), aad=fqdn.encode()),
            info=info,
            updated=self._clock(),
        )

    def _bundle(
        self,
        sr: str,
        fqdns: frozenset[str],
        records: Mapping[str, CertRecord],
        owner_of: OwnerOf,
    ) -> CertBundle:
        chosen: dict[str, tuple[CertRecord, tuple[str, ...], bool]] = {}
        for fqdn in sorted(fqdns):
            owner = owner_of(fqdn)
            record = records.get(fqdn)
            if record is None or record.tenant != owner:
                record = self._manual_cover(records, fqdn, owner)
            if record is None or record.fqdn in chosen:
                continue
            # Only names the certificate's owner owns: never another tenant's FQDN.
            names = tuple(n for n in record.info.names if _owns(owner_of, record.tenant, n))
            if not names:
                continue
            chosen[record.fqdn] = (record, names, self.redirects.get(record.fqdn, False))
        items = tuple(chosen[f] for f in sorted(chosen))
        lines = "".join(
            f"{r.fqdn}\0{r.info.fingerprint}\0{','.join(names)}\0{int(redirect)}\n"
            for r, names, redirect in items
        )
        return CertBundle(sr, 0, hashlib.sha256(lines.encode()).hexdigest(), items)

    # -- distribution -------------------------------------------------------------------------

    def body(self, bundle: CertBundle) -> bytes:
        """The bundle as the SR receives it: with keys (a router or operator caller only)."""
        if bundle._body is None:
            certs = []
            for record, names, redirect in bundle.records:
                key = self.box.unseal(record.sealed_key, aad=record.fqdn.encode()).decode()
                certs.append(
                    {
                        "fqdn": record.fqdn,
                        "names": list(names),
                        "chain": record.chain_pem,
                        "key": key,
                        "redirect_http": redirect,
                        "fingerprint_sha256": record.info.fingerprint,
                        "not_after": record.info.to_dict()["not_after"],
                        "source": record.source,
                    }
                )
            bundle._body = json.dumps(
                {"sr": bundle.sr, "version": bundle.version, "certs": certs},
                separators=(",", ":"),
            ).encode()
        return bundle._body

    def bundle(self, sr: str) -> CertBundle:
        found = self.bundles.get(sr)
        if found is None:
            version, digest = self._versions.get(sr, (0, ""))
            found = CertBundle(sr, version, digest, ())
        return found

    async def wait(
        self, sr: str, since: int, timeout: float, draining: Callable[[], bool]
    ) -> CertBundle | None:
        """The SR's bundle once its version exceeds `since`; None after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            bundle = self.bundle(sr)
            if bundle.version > since:
                return bundle
            remaining = deadline - loop.time()
            if remaining <= 0 or draining():
                return None
            event = self._waiters.setdefault(sr, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    def status(self) -> dict[str, Any]:
        by_source: dict[str, int] = {}
        for r in self.records.values():
            by_source[r.source] = by_source.get(r.source, 0) + 1
        return {"certificates": by_source, "issued": self.issued, "renewed": self.renewed}


def _owns(owner_of: OwnerOf, tenant: str | None, name: str) -> bool:
    base = name[2:] if name.startswith("*.") else name
    if name.startswith("*."):
        # A wildcard covers every child of `base`: the owner must own the children.
        return owner_of("x." + base) == tenant and owner_of(base) == tenant
    return owner_of(base) == tenant


def _normalise_pem(text: str) -> str:
    return text.strip().replace("\r\n", "\n") + "\n"


def open_cert_manager(
    state_dir: Path,
    *,
    db: Path | None = None,
    lifetime_days: float = 30.0,
    automatic: bool = True,
) -> CertManager:
    """The PCE's certificates under `state_dir`: the platform CA in `ca/`, the sealing key in
    `certs.key` (0600), the certificates in `certs.sqlite3` (or `db`)."""
    ca = PlatformCA.open(state_dir / "ca")
    box = SecretBox.open(state_dir / "certs.key")
    store = CertStore(db or state_dir / "certs.sqlite3")
    return CertManager(store, box, ca, lifetime_days=lifetime_days, automatic=automatic)
