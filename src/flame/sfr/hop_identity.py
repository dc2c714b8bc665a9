"""Platform identities for hop-by-hop TLS inside the platform (SFR-19; docs/tls.md).

The PCE's platform CA issues

* each SR one certificate (ECDSA P-256, `lifetime_days`, renewed once less than
  `renew_fraction` of its life is left) with both `clientAuth` (the SR connecting to TLS
  endpoints and to egress SRs) and `serverAuth` (the SR's own egress-hop listener), naming
  `URI:flame:sr:<sr-id>` (what an egress SR checks before honouring `X-Flame-Endpoint`),
  the SR id as a DNS name, and the SR's topology address (what ingress SRs check). It
  travels in the SR's certificate bundle (`client`, with the CA as `trust` and the PCE's
  `hop_tls` mode), so it rotates through the same long poll as content certificates.
* endpoints that opt in (`Endpoint.tls`) a server certificate for their host (IP or DNS
  name), asked for by whoever starts them (`POST /v1/certs/endpoint`, router or operator).

Identities live in the active PCE's memory only: a restarted or standby PCE issues new ones,
which reach the SRs as any rotation does (the bundle's digest changes). Keys are never logged.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from flame.common.errors import UserError
from flame.common.pki import PlatformCA, fingerprint_of

__all__ = ["HopTls", "SrIdentities", "SrIdentity", "sr_uri"]

log = logging.getLogger("flame.sfr.hop_identity")

SR_URI_PREFIX = "flame:sr:"
MAX_ENDPOINT_CERT_DAYS = 90.0
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class HopTls(enum.StrEnum):
    """The operator's switch (`flame serve pce --hop-tls`)."""

    OFF = "off"  # no SR identities: endpoints registered with tls cannot be reached
    ENDPOINTS = "endpoints"  # SRs get identities; TLS towards endpoints that opt in
    ALL = "all"  # ... and egress hops between SRs over mutual TLS as well


def sr_uri(sr: str) -> str:
    return f"{SR_URI_PREFIX}{sr}"


@dataclass(frozen=True, slots=True)
class SrIdentity:
    sr: str
    address: str | None
    chain_pem: str
    key_pem: str = field(repr=False)
    fingerprint: str = ""
    not_after: float = 0.0
    issued_at: float = 0.0


def _host_names(host: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) for a certificate naming `host`."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return [host], []
    return [], [host]


class SrIdentities:
    """The SRs' identities, issued on first use and renewed when due."""

    def __init__(
        self,
        ca: PlatformCA,
        mode: HopTls = HopTls.OFF,
        *,
        lifetime_days: float = 30.0,
        renew_fraction: float = 1 / 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.mode = HopTls(mode)
        self.lifetime_days = lifetime_days
        self.renew_fraction = renew_fraction
        self._clock = clock
        self._by_sr: dict[str, SrIdentity] = {}
        self.issued = 0
        self.renewed = 0
        self.endpoint_certs = 0

    def current(self, sr: str, address: str | None) -> SrIdentity | None:
        """The SR's identity, (re)issued when missing, due or its address changed; None when
        hop TLS is off."""
        if self.mode is HopTls.OFF:
            return None
        found = self._by_sr.get(sr)
        now = self._clock()
        if found is not None and found.address == address and not self._due(found, now):
            return found
        names, ips = _host_names(address) if address else ([], [])
        issued = self.ca.issue(
            [sr, *names],
            days=self.lifetime_days,
            ip_addresses=ips,
            client=True,
            uris=[sr_uri(sr)],
        )
        identity = SrIdentity(
            sr=sr,
            address=address,
            chain_pem=issued.chain_pem,
            key_pem=issued.key_pem,
            fingerprint=fingerprint_of(issued.chain_pem),
            not_after=issued.not_after,
            issued_at=now,
        )
        self._by_sr[sr] = identity
        if found is None:
            self.issued += 1
        else:
            self.renewed += 1
        log.info(
            "hop TLS: identity for SR %s %s (sha256 %s)",
            sr,
            "issued" if found is None else "renewed",
            identity.fingerprint[:16],
        )
        return identity

    def forget(self, keep: set[str]) -> None:
        for sr in set(self._by_sr) - keep:
            del self._by_sr[sr]

    def renew(self, sr: str) -> None:
        """Issue the SR's identity again at the next sync (the operator asked)."""
        self._by_sr.pop(sr, None)

    def due(self) -> bool:
        now = self._clock()
        return any(self._due(i, now) for i in self._by_sr.values())

    def _due(self, identity: SrIdentity, now: float) -> bool:
        life = identity.not_after - identity.issued_at
        return identity.not_after - now < life * self.renew_fraction

    def endpoint_cert(self, host: str, days: float | None = None) -> dict[str, object]:
        """A server certificate for an endpoint listening on `host` (IP or DNS name)."""
        if self.mode is HopTls.OFF:
            raise HopTlsOff(
                "hop TLS is off at this PCE: start it with --hop-tls endpoints (or all) "
                "to issue endpoint certificates"
            )
        days = self.lifetime_days if days is None else days
        if not 0 < days <= MAX_ENDPOINT_CERT_DAYS:
            raise UserError(f"days must be in (0, {MAX_ENDPOINT_CERT_DAYS:g}]", days=days)
        names, ips = _host_names(host)
        if names and not _DNS_NAME.fullmatch(host):
            raise UserError(f"{host!r} is neither an IP address nor a DNS name", host=host)
        issued = self.ca.issue(names, days=days, ip_addresses=ips)
        self.endpoint_certs += 1
        log.info("hop TLS: endpoint certificate issued for %s", host)
        return {
            "host": host,
            "chain": issued.chain_pem,
            "key": issued.key_pem,
            "ca": self.ca.cert_pem,
            "not_after": issued.not_after,
            "fingerprint_sha256": fingerprint_of(issued.chain_pem),
        }

    def status(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "identities": len(self._by_sr),
            "issued": self.issued,
            "renewed": self.renewed,
            "endpoint_certs": self.endpoint_certs,
        }


class HopTlsOff(UserError):
    code: ClassVar[str] = "hop_tls_off"
    http_status: ClassVar[int] = 409
