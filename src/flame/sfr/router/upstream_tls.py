"""Hop-by-hop TLS from the SR (SFR-19; docs/tls.md): the SR's platform identity and contexts.

    hop = UpstreamTls()
    hop.apply(parse_identity(bundle))  # from the PCE's certificate bundle (tls.CertSubscriber)
    hop.client                         # the SSLContext new upstream TLS connections use
    hop.server                         # the egress-hop listener's context (CERT_REQUIRED)

The PCE's platform CA issues every SR one certificate (client and server use, naming
`URI:flame:sr:<sr-id>`), carried in the SR's bundle with the CA (`trust`) and the PCE's mode
(`hop_tls`: endpoints or all). Each new certificate builds a new client context (hardened
like the SR's listeners, trusting the platform CA only, host names checked, the chain
loaded through a memory file as content keys are) and replaces `client` in one assignment;
the pool (pool.py) then drains the TLS connections made with the previous one, so a rotation
drops no request. The egress-hop listener keeps one context whose chain is reloaded in place
(open connections keep theirs) and which asks every client for a certificate of the
platform CA; `peer_sr` tells whether a connection's verified peer names an SR.

Only connections are made here: nothing runs per request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.tls import harden, load_chain, server_context

__all__ = [
    "HopIdentity",
    "UpstreamTls",
    "client_context",
    "identity_from_files",
    "parse_identity",
    "peer_sr",
]

log = logging.getLogger(__name__)

SR_URI_PREFIX = "flame:sr:"
TLS_KEY_PREFIX = "tls:"  # pool keys of TLS connections: never shared with plain ones
MODES = ("endpoints", "all")


@dataclass(frozen=True, slots=True)
class HopIdentity:
    """The SR's platform identity as its bundle carries it."""

    chain_pem: str
    key_pem: str = field(repr=False)
    trust_pem: str = field(repr=False)
    fingerprint: str = ""
    not_after: float = 0.0
    mode: str = "endpoints"  # the PCE's --hop-tls: "endpoints" or "all"


def parse_identity(data: Mapping[str, Any]) -> HopIdentity | None:
    """The identity in a `GET /v1/certs/sr/{sr}` answer; None when the PCE gives none."""
    client = data.get("client")
    if client is None:
        return None
    if not isinstance(client, Mapping):
        raise ValueError("client must be an object")
    mode = str(data.get("hop_tls", "endpoints"))
    if mode not in MODES:
        raise ValueError(f"unknown hop_tls mode {mode!r}")
    return HopIdentity(
        chain_pem=str(client["chain"]),
        key_pem=str(client["key"]),
        trust_pem=str(data["trust"]),
        fingerprint=str(client.get("fingerprint_sha256", "")),
        not_after=float(client.get("not_after") or 0.0),
        mode=mode,
    )


def identity_from_files(chain: str, key: str, ca: str) -> HopIdentity:
    """A fixed identity (`hop_tls_files`): PEM files of the SR's chain, its key, the CA."""
    from flame.common.pki import fingerprint_of  # noqa: PLC0415 - cryptography is heavy

    chain_pem = Path(chain).read_text(encoding="ascii")
    return HopIdentity(
        chain_pem=chain_pem,
        key_pem=Path(key).read_text(encoding="ascii"),
        trust_pem=Path(ca).read_text(encoding="ascii"),
        fingerprint=fingerprint_of(chain_pem),
    )


def client_context(identity: HopIdentity) -> ssl.SSLContext:
    """TLS 1.2+, AEAD suites, the platform CA as the only trust, host names checked, and the
    SR's certificate for the server to verify."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    harden(ctx)
    ctx.load_verify_locations(cadata=identity.trust_pem)
    load_chain(ctx, identity.chain_pem, identity.key_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def peer_sr(peercert: Mapping[str, Any] | None) -> str | None:
    """The SR id a verified peer certificate names (`URI:flame:sr:<id>`), else None."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(SR_URI_PREFIX):
            sr = value[len(SR_URI_PREFIX) :]
            if sr:
                return sr
    return None


class UpstreamTls:
    """One worker's client context (per identity generation) and hop-listener context."""

    def __init__(self) -> None:
        self.client: ssl.SSLContext | None = None
        self.identity: HopIdentity | None = None
        self.generation = 0  # grows with every identity applied
        self.server = server_context()
        # Ingress SRs must show a certificate of the platform CA (loaded with the identity):
        # until then no client certificate verifies and every hop handshake fails.
        self.server.verify_mode = ssl.CERT_REQUIRED
        self._trusted: set[str] = set()
        self.failures = 0
        self.on_change: list[Callable[[UpstreamTls], None]] = []

    @property
    def mode(self) -> str | None:
        return None if self.identity is None else self.identity.mode

    def apply(self, identity: HopIdentity | None) -> bool:
        """Use `identity` for connections made from now on; True if it changed anything."""
        if identity == self.identity:
            return False
        if identity is None:
            self.client, self.identity = None, None
        else:
            try:
                ctx = client_context(identity)
                if identity.trust_pem not in self._trusted:
                    self.server.load_verify_locations(cadata=identity.trust_pem)
                    self._trusted.add(identity.trust_pem)
                # In place: handshakes that start after this present the new certificate.
                load_chain(self.server, identity.chain_pem, identity.key_pem)
            except (ssl.SSLError, OSError, ValueError) as exc:
                self.failures += 1
                log.error(
                    "hop TLS: cannot load this SR's platform identity (%s); keeping the last",
                    getattr(exc, "reason", None) or type(exc).__name__,
                )
                return False
            self.client, self.identity = ctx, identity
        self.generation += 1
        log.info(
            "hop TLS: identity %s (mode %s), generation %d",
            identity.fingerprint[:16] if identity else "none",
            identity.mode if identity else "-",
            self.generation,
        )
        for callback in self.on_change:
            callback(self)
        return True

    def describe(self) -> dict[str, Any]:
        """For /.flame/status: fingerprint and expiry, never the key."""
        identity = self.identity
        return {
            "mode": identity.mode if identity else None,
            "fingerprint_sha256": identity.fingerprint if identity else None,
            "not_after": identity.not_after if identity else None,
            "generation": self.generation,
            "failures": self.failures,
        }
