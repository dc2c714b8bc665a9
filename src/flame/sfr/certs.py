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
* **ACME (SFR-23).** With an `AcmeIssuer` (`flame.sfr.acme`) the certificates the platform CA
  would issue are ordered from the operator's ACME directory instead (source `acme`); the
  challenge answers travel in the same bundles, and a name keeps its current certificate
  (or has none) until the CA's arrives.
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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.errors import UserError
from flame.common.pki import PlatformCA, SecretBox, inspect_chain
from flame.sfr.acme import AcmeConfig, AcmeIssuer, Issued
from flame.sfr.certs_store import CertRecord, CertStore
from flame.sfr.hop_identity import HopTls, SrIdentities, SrIdentity
from flame.sfr.registry import Conflict, NotFound

__all__ = ["CertBundle", "CertManager", "CertRecord", "CertStore", "open_cert_manager"]

log = logging.getLogger("flame.sfr.certs")

MANUAL = "manual"
PLATFORM = "platform"
ACME = "acme"
AUTOMATIC = (PLATFORM, ACME)
LIVE_S = 90.0  # an SR that long-polled its bundle this recently is live (ACME delivery)


@dataclass(slots=True)
class CertBundle:
    """One SR's certificates as distributed: version, digest, and the JSON made on demand."""

    sr: str
    version: int
    digest: str
    records: tuple[tuple[CertRecord, tuple[str, ...], bool], ...]  # record, names, redirect
    challenges: tuple[tuple[str, str, str], ...] = ()  # ACME http-01: fqdn, token, answer
    identity: SrIdentity | None = None  # the SR's own certificate (hop TLS, hop_identity.py)
    _body: bytes | None = None


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
        acme: AcmeIssuer | None = None,
        hop_tls: HopTls = HopTls.OFF,
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
        self.acme = acme
        self.identities = SrIdentities(
            ca, hop_tls, lifetime_days=lifetime_days, renew_fraction=renew_fraction, clock=clock
        )
        self._acked: dict[str, int] = {}  # SR -> the bundle version it last said it has
        self._polled: dict[str, float] = {}  # SR -> (monotonic) when it last asked
        self._last: tuple[dict[str, frozenset[str]], OwnerOf] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if acme is not None:
            acme.notify = self._acme_notify
            acme.delivered = self.challenge_delivered
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
        if self.acme is not None and record.source in AUTOMATIC:
            self.acme.want(fqdn, owner, force=True)  # the CA's certificate follows
            return record
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

    def sync(
        self,
        routed: Mapping[str, Iterable[str]],
        owner_of: OwnerOf,
        addresses: Mapping[str, str | None] | None = None,
    ) -> dict[str, int]:
        """Bring certificates and bundles in line with the tables (`routed`: SR -> FQDNs its
        table routes) and the delegations (`owner_of`); returns SRs with new bundle versions.

        Removes certificates whose FQDN changed hands, issues missing and due platform
        certificates, drops platform certificates nobody routes, persists, then publishes."""
        routed_sets = {sr: frozenset(fqdns) for sr, fqdns in routed.items()}
        self._remember(routed_sets, owner_of)
        everything = frozenset().union(*routed_sets.values()) if routed_sets else frozenset()
        now = self._clock()
        records = dict(self.records)
        put: list[CertRecord] = []
        delete: list[str] = []
        for fqdn, record in list(records.items()):
            owner = owner_of(fqdn)
            gone = owner != record.tenant
            unused = record.source in AUTOMATIC and (fqdn not in everything or owner is None)
            if gone or unused:
                del records[fqdn]
                delete.append(fqdn)
                log.info(
                    "certificate for %s removed (%s)",
                    fqdn,
                    "the FQDN changed hands" if gone else "no SR routes it any more",
                )
        if self.acme is not None:
            put.extend(self._install_acme(records, everything, owner_of))
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
                replacing = self.acme is not None and current is not None and current.source != ACME
                if current is not None and not self._due(current, now) and not replacing:
                    continue  # (a platform certificate is replaced once ACME is configured)
                if self.acme is not None:
                    self.acme.want(fqdn, owner)  # the current one (if any) stays until then
                    continue
                new = self._issue(fqdn, owner)
                records[fqdn] = new
                put.append(new)
                if current is None:
                    self.issued += 1
                else:
                    self.renewed += 1
        pending = self.acme.challenges() if self.acme is not None else {}
        self.identities.forget(set(routed_sets))
        bundles = {
            sr: self._bundle(sr, fqdns, records, owner_of, pending)
            for sr, fqdns in routed_sets.items()
        }
        for sr, bundle in bundles.items():  # hop TLS: the SR's identity rides with its bundle
            identity = self.identities.current(sr, (addresses or {}).get(sr))
            if identity is not None:
                bundle.identity = identity
                bundle.digest = hashlib.sha256(
                    f"{bundle.digest}\0{identity.fingerprint}\0{self.identities.mode}".encode()
                ).hexdigest()
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
        """Does some automatic certificate need renewing, or an ACME one installing, now?"""
        if self.acme is not None and self.acme.has_results():
            return True
        now = self._clock()
        if self.identities.due():
            return True
        return any(r.source in AUTOMATIC and self._due(r, now) for r in self.records.values())

    # -- ACME (flame.sfr.acme) ------------------------------------------------------------------

    def _remember(self, routed: dict[str, frozenset[str]], owner_of: OwnerOf) -> None:
        """What the next sync the ACME worker triggers works with (the loop's thread only)."""
        self._last = (routed, owner_of)
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def _acme_notify(self) -> None:
        """From the ACME worker: a challenge or a certificate to publish; sync on the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resync)

    def _resync(self) -> None:
        if self._last is None:
            return
        try:
            self.sync(*self._last)
        except Exception:
            log.exception("certificates could not be brought up to date after an ACME event")

    def challenge_delivered(self, fqdn: str) -> bool:
        """Has some live SR, and every live SR, whose bundle carries `fqdn`'s challenges
        fetched that bundle? (Live: it asked for its bundle within `LIVE_S`; a live SR asks
        again at once when its version grows. One that is down cannot be validated against;
        with none up yet the issuer waits until its `delivery_timeout`.)"""
        now = time.monotonic()
        carried = False
        for sr, bundle in list(self.bundles.items()):
            if now - self._polled.get(sr, -LIVE_S) > LIVE_S:
                continue
            if any(c[0] == fqdn for c in bundle.challenges):
                if self._acked.get(sr, 0) < bundle.version:
                    return False
                carried = True
            elif self._last is not None and fqdn in self._last[0].get(sr, frozenset()):
                return False  # routed there, but the bundle with the challenge is not made yet
        return carried

    def _install_acme(
        self, records: dict[str, CertRecord], everything: frozenset[str], owner_of: OwnerOf
    ) -> list[CertRecord]:
        assert self.acme is not None
        put = []
        for issued in self.acme.take_results():
            current = records.get(issued.fqdn)
            if owner_of(issued.fqdn) != issued.owner or issued.fqdn not in everything:
                log.info("ACME certificate for %s dropped: no longer routed or owned", issued.fqdn)
                continue
            if current is not None and current.source == MANUAL:
                continue  # an upload came meanwhile: the tenant's choice wins
            record = self._acme_record(issued)
            if record is None:
                continue
            records[issued.fqdn] = record
            put.append(record)
            if current is None:
                self.issued += 1
            else:
                self.renewed += 1
        return put

    def _acme_record(self, issued: Issued) -> CertRecord | None:
        try:
            info = inspect_chain(issued.chain_pem, issued.key_pem)
        except UserError as exc:
            log.warning("ACME certificate for %s refused: %s", issued.fqdn, exc)
            return None
        if not info.covers(issued.fqdn):
            log.warning("ACME certificate for %s does not name it; refused", issued.fqdn)
            return None
        return CertRecord(
            fqdn=issued.fqdn,
            source=ACME,
            tenant=issued.owner,
            chain_pem=_normalise_pem(issued.chain_pem),
            sealed_key=self.box.seal(issued.key_pem.encode(), aad=issued.fqdn.encode()),
            info=info,
            updated=self._clock(),
        )

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
        pending: Mapping[str, Mapping[str, str]],
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
        challenges = tuple(
            (fqdn, token, answer)
            for fqdn in sorted(fqdns & pending.keys())
            for token, answer in sorted(pending[fqdn].items())
        )
        lines += "".join(f"acme\0{f}\0{t}\0{a}\n" for f, t, a in challenges)
        digest = hashlib.sha256(lines.encode()).hexdigest()
        return CertBundle(sr, 0, digest, items, challenges)

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
            doc: dict[str, Any] = {"sr": bundle.sr, "version": bundle.version, "certs": certs}
            if bundle.identity is not None:
                doc["client"] = {
                    "chain": bundle.identity.chain_pem,
                    "key": bundle.identity.key_pem,
                    "fingerprint_sha256": bundle.identity.fingerprint,
                    "not_after": bundle.identity.not_after,
                }
                doc["trust"] = self.ca.cert_pem
                doc["hop_tls"] = self.identities.mode.value
            if bundle.challenges:
                doc["acme_challenges"] = [
                    {"fqdn": f, "token": t, "key_authorization": a} for f, t, a in bundle.challenges
                ]
            bundle._body = json.dumps(doc, separators=(",", ":")).encode()
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
        if since > self._acked.get(sr, 0):
            self._acked[sr] = since  # the SR has that version (ACME waits for it)
        self._polled[sr] = time.monotonic()
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
        doc: dict[str, Any] = {
            "certificates": by_source,
            "issued": self.issued,
            "renewed": self.renewed,
        }
        if self.acme is not None:
            doc["acme"] = self.acme.summary()
        if self.identities.mode is not HopTls.OFF:
            doc["hop_tls"] = self.identities.status()
        return doc


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
    acme: AcmeConfig | None = None,
    hop_tls: HopTls = HopTls.OFF,
) -> CertManager:
    """The PCE's certificates under `state_dir`: the platform CA in `ca/`, the sealing key in
    `certs.key` (0600), the certificates in `certs.sqlite3` (or `db`); with `acme`, automatic
    certificates come from that directory (account in `acme/`)."""
    ca = PlatformCA.open(state_dir / "ca")
    box = SecretBox.open(state_dir / "certs.key")
    store = CertStore(db or state_dir / "certs.sqlite3")
    issuer = AcmeIssuer(acme, box, state_dir / "acme") if acme is not None else None
    return CertManager(
        store,
        box,
        ca,
        lifetime_days=lifetime_days,
        automatic=automatic,
        acme=issuer,
        hop_tls=hop_tls,
    )
