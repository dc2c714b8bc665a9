"""TLS termination at the SR (SFR-19): one certificate per FQDN chosen by SNI, swapped live.

    sites = TlsSites()                              # sites.context goes to create_server(ssl=)
    sites.update([Site("vod.example", ("vod.example",), chain_pem, key_pem)])
    CertSubscriber("sr-1", ("https://pce:7070",), sites, token=...)   # the PCE's certificates
    StaticCerts((("cert.pem", "key.pem"),), sites)                    # or files (no PCE)

The listening context has no certificate of its own: its SNI callback looks the client's
server name up (exact name first, then a one-label wildcard `*.parent`) and switches the
handshake to that FQDN's context. An unknown name, or no name at all, ends the handshake with
an `unrecognized_name` alert: the SR has no default site, so it never shows one tenant's
certificate for another's name. `update` builds a context per new certificate (an unchanged
one keeps its context) and replaces the lookup tables in one assignment: handshakes that
start after it see the new certificates, established connections keep theirs (nothing is
dropped).

Session resumption: every per-FQDN context resumes through the listening context, which
holds the session cache and ticket keys (OpenSSL keeps them on the context the handshake
started with). With several workers, `set_ticket_keys` gives every worker's listening context
the same ticket keys (a random 80 bytes the parent makes at start), so a ticket issued by
one worker resumes on another, as nginx does by creating its contexts before forking.

Certificates come from the PCE (`CertSubscriber`: a long poll like the table's, SFR-22/23)
and/or from files (`StaticCerts`). Keys live in memory only (loaded through a memory file,
`flame.common.tls.load_chain`); they are never logged or shown by the status endpoint, which
lists names, fingerprints and expiry dates.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flame.common.backoff import Backoff
from flame.common.tls import load_chain, server_context
from flame.sfr.router.upstream_tls import HopIdentity, parse_identity

__all__ = [
    "CertSubscriber",
    "Site",
    "StaticCerts",
    "TlsSites",
    "parse_bundle",
    "set_ticket_keys",
]

log = logging.getLogger(__name__)

GENERATION_HEADER = "X-Flame-Cert-Generation"
TICKET_KEY_BYTES = 80  # OpenSSL 1.1+: 16 name + 32 HMAC secret + 32 AES key


@dataclass(frozen=True, slots=True)
class Site:
    """One FQDN's certificate at this SR."""

    fqdn: str
    names: tuple[str, ...]  # the certificate's DNS names (SNI values it answers)
    chain_pem: str
    key_pem: str = field(repr=False)
    redirect_http: bool = False  # plain HTTP for `fqdn` is answered 308 to https
    fingerprint: str = ""
    not_after: str | None = None
    source: str = "static"  # "manual", "platform" (from the PCE) or "static" (files)

    def describe(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "fingerprint_sha256": self.fingerprint,
            "not_after": self.not_after,
            "source": self.source,
            "redirect_http": self.redirect_http,
        }


class TlsSites:
    """The SNI map of one worker: name -> SSL context, replaced whole on `update`."""

    def __init__(self, *, ticket_key: bytes | None = None) -> None:
        self.context = server_context()
        self.context.sni_callback = self._select
        if ticket_key is not None:
            set_ticket_keys(self.context, ticket_key)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}  # parent of "*.parent" -> context
        self._built: dict[tuple[str, str], ssl.SSLContext] = {}  # (fingerprint, fqdn) -> ctx
        self.sites: dict[str, Site] = {}  # fqdn -> site
        self.redirects: frozenset[str] = frozenset()
        self.updates = 0
        self.updated_at: float | None = None
        self.unknown_names = 0  # handshakes refused: no certificate for the name (or none sent)
        # Handshakes given a certificate, per name served (full or resumed: the SNI callback
        # runs on every ClientHello). Bounded: only names of the current certificates count.
        self.handshakes: dict[str, int] = {}
        self.on_change: list[Callable[[TlsSites], None]] = []

    # -- the handshake ------------------------------------------------------------------------

    def _select(
        self, obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        if name:
            name = name.lower().rstrip(".")
            ctx = self._exact.get(name)
            if ctx is None:
                _, _, parent = name.partition(".")
                ctx = self._wildcard.get(parent)
                name = f"*.{parent}"
            if ctx is not None:
                obj.context = ctx
                self.handshakes[name] = self.handshakes.get(name, 0) + 1
                return None
        self.unknown_names += 1
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    # -- changes ------------------------------------------------------------------------------

    def update(self, sites: Iterable[Site]) -> None:
        """Serve exactly `sites` from the next handshake on. A certificate that cannot be
        loaded is logged and left out (the others still change)."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        built: dict[tuple[str, str], ssl.SSLContext] = {}
        kept: dict[str, Site] = {}
        for site in sites:
            key = (site.fingerprint or str(hash((site.chain_pem, site.key_pem))), site.fqdn)
            ctx = self._built.get(key)
            if ctx is None:
                ctx = server_context()
                try:
                    load_chain(ctx, site.chain_pem, site.key_pem)
                except (ssl.SSLError, OSError, ValueError) as exc:
                    # The reason only (OpenSSL's words): never the PEM.
                    log.error(
                        "TLS: cannot load the certificate for %s (%s); not serving it",
                        site.fqdn,
                        getattr(exc, "reason", None) or type(exc).__name__,
                    )
                    continue
            built[key] = ctx
            kept[site.fqdn] = site
            for given in site.names:
                name = given.lower().rstrip(".")
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        # One assignment each: a handshake sees the old maps or the new ones.
        self._exact, self._wildcard, self._built = exact, wildcard, built
        served = {*exact, *(f"*.{p}" for p in wildcard)}
        self.handshakes = {n: c for n, c in self.handshakes.items() if n in served}
        self.sites = kept
        self.redirects = frozenset(s.fqdn for s in kept.values() if s.redirect_http)
        self.updates += 1
        self.updated_at = time.time()
        for callback in self.on_change:
            callback(self)

    def names(self) -> list[str]:
        return sorted([*self._exact, *(f"*.{p}" for p in self._wildcard)])

    def describe(self) -> dict[str, Any]:
        """For the status endpoint: names and fingerprints, never keys."""
        return {
            "sites": {fqdn: s.describe() for fqdn, s in sorted(self.sites.items())},
            "updates": self.updates,
            "updated_at": self.updated_at,
            "unknown_names": self.unknown_names,
            "handshakes": dict(sorted(self.handshakes.items())),
        }


# -- where certificates come from ------------------------------------------------------------------


def parse_bundle(data: Mapping[str, Any]) -> tuple[int, list[Site]]:
    """(version, sites) from the PCE's `GET /v1/certs/sr/{sr}` answer."""
    version = data["version"]
    if not isinstance(version, int):
        raise ValueError("version must be an integer")
    sites = []
    for entry in data["certs"]:
        sites.append(
            Site(
                fqdn=str(entry["fqdn"]),
                names=tuple(str(n) for n in entry["names"]),
                chain_pem=str(entry["chain"]),
                key_pem=str(entry["key"]),
                redirect_http=bool(entry.get("redirect_http", False)),
                fingerprint=str(entry.get("fingerprint_sha256", "")),
                not_after=entry.get("not_after"),
                source=str(entry.get("source", "manual")),
            )
        )
    return version, sites


def parse_challenges(data: Mapping[str, Any]) -> dict[str, dict[bytes, bytes]]:
    """ACME http-01 answers in a bundle: fqdn -> token -> key authorization (ASCII only)."""
    found: dict[str, dict[bytes, bytes]] = {}
    for entry in data.get("acme_challenges") or ():
        fqdn = str(entry["fqdn"]).lower().rstrip(".")
        token = str(entry["token"]).encode("ascii")
        answer = str(entry["key_authorization"]).encode("ascii")
        found.setdefault(fqdn, {})[token] = answer
    return found


class StaticCerts:
    """Certificates from files (`flame serve sr --tls-cert FILE --tls-key FILE`), merged with
    what the PCE sends (a PCE's certificate for the same FQDN wins)."""

    def __init__(self, files: Sequence[tuple[str, str]], *, redirect: Iterable[str] = ()) -> None:
        redirects = {r.lower().rstrip(".") for r in redirect}
        self.sites: list[Site] = []
        for cert_file, key_file in files:
            chain = Path(cert_file).read_text(encoding="ascii")
            key = Path(key_file).read_text(encoding="ascii")
            from flame.common.pki import inspect_chain  # noqa: PLC0415 - cryptography is heavy

            info = inspect_chain(chain, key)
            fqdn = next((n for n in info.names if not n.startswith("*.")), info.names[0])
            self.sites.append(
                Site(
                    fqdn=fqdn,
                    names=info.names,
                    chain_pem=chain,
                    key_pem=key,
                    redirect_http=bool(redirects & set(info.names)),
                    fingerprint=info.fingerprint,
                    not_after=str(info.to_dict()["not_after"]),
                    source="static",
                )
            )


class CertSubscriber:
    """Long-polls the PCE(s) for this SR's certificates (the FQDNs its table routes).

        GET {pce}/v1/certs/sr/{sr}?since={version}&wait={s}     Authorization: Bearer <router>
        -> 200 {"sr", "version", "certs": [{fqdn, names, chain, key, redirect_http, ...}]}
        -> 304: nothing changed within `wait` seconds

    Like the table subscriber: URLs in order, the next one when a PCE does not answer, the
    last certificates kept while none does; `X-Flame-Cert-Generation` tells a replaced
    certificate store (versions restart) from an older answer.
    """

    def __init__(
        self,
        sr_id: str,
        urls: Sequence[str],
        apply: Callable[[list[Site]], None],
        *,
        token: str | None = None,
        wait: float = 25.0,
        verify: ssl.SSLContext | bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_challenges: Callable[[dict[str, dict[bytes, bytes]]], None] | None = None,
        on_identity: Callable[[HopIdentity | None], None] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("CertSubscriber needs at least one PCE URL")
        self._on_challenges = on_challenges
        self._on_identity = on_identity  # hop TLS: the SR's own identity (upstream_tls.py)
        self.sr_id = sr_id
        self.urls = tuple(u.rstrip("/") for u in urls)
        self._apply = apply
        self.wait = wait
        self._verify = verify
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._transport = transport
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.version: int | None = None
        self.generation: str | None = None
        self.polls = 0
        self.failures = 0
        self.applied = 0

    async def run(self) -> None:
        timeout = httpx.Timeout(self.wait + 10.0, connect=3.0)
        async with httpx.AsyncClient(
            transport=self._transport,
            trust_env=False,
            timeout=timeout,
            headers=self._headers,
            verify=self._verify,
        ) as client:
            backoff = Backoff(self.backoff_initial, self.backoff_max)
            while True:
                answered = False
                for url in self.urls:
                    if await self._poll(client, url):
                        answered = True
                        break
                if answered:
                    backoff.reset()
                    continue
                await asyncio.sleep(backoff.failure())

    async def _poll(self, client: httpx.AsyncClient, url: str) -> bool:
        self.polls += 1
        try:
            response = await client.get(
                f"{url}/v1/certs/sr/{self.sr_id}",
                params={"since": self.version or 0, "wait": self.wait},
            )
        except httpx.HTTPError as exc:
            self.failures += 1
            log.info("PCE %s did not answer for certificates (%s)", url, type(exc).__name__)
            return False
        generation = response.headers.get(GENERATION_HEADER) or None
        if response.status_code == 304:
            if generation and self.generation and generation != self.generation:
                self.version = None  # the store was replaced: ask for everything again
            return True
        if response.status_code != 200:
            self.failures += 1
            log.warning(
                "PCE %s answered %d for SR %r's certificates; trying the next",
                url,
                response.status_code,
                self.sr_id,
            )
            return False
        try:
            data = response.json()
            version, sites = parse_bundle(data)
            challenges = parse_challenges(data)
            identity = parse_identity(data)
        except (ValueError, KeyError, TypeError) as exc:  # (UnicodeError is a ValueError)
            self.failures += 1
            log.warning("PCE %s sent certificates that cannot be read (%s)", url, exc)
            return False
        newer_store = bool(generation and self.generation and generation != self.generation)
        if self.version is not None and version <= self.version and not newer_store:
            return True
        if self._on_challenges is not None:
            self._on_challenges(challenges)
        if self._on_identity is not None:
            self._on_identity(identity)
        self._apply(sites)
        self.version = version
        self.generation = generation or self.generation
        self.applied += 1
        log.info(
            "SR %s: certificates version %d: %s",
            self.sr_id,
            version,
            ", ".join(sorted(s.fqdn for s in sites)) or "none",
        )
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "polls": self.polls,
            "failures": self.failures,
            "applied": self.applied,
        }


# -- TLS session ticket keys shared by the workers ---------------------------------------------------

_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_libssl: ctypes.CDLL | None = None


def _ssl_library() -> ctypes.CDLL | None:
    global _libssl  # noqa: PLW0603 - loaded once per process
    if _libssl is None:
        # The libssl the interpreter's _ssl module is linked with (already loaded: dlopen
        # returns that one).
        import _ssl  # noqa: PLC0415

        candidates = []
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libssl.so" in path and path not in candidates:
                    candidates.append(path)
        if not candidates and (found := ctypes.util.find_library("ssl")):
            candidates.append(found)
        for path in candidates:
            try:
                lib = ctypes.CDLL(path)
                lib.SSL_CTX_ctrl.restype = ctypes.c_long
                lib.SSL_CTX_ctrl.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_int,
                    ctypes.c_long,
                    ctypes.c_void_p,
                ]
                lib.SSL_CTX_get_options.restype = ctypes.c_uint64
                lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            except (OSError, AttributeError):
                continue
            _libssl = lib
            break
        del _ssl
    return _libssl


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The SSL_CTX* inside a Python SSLContext (the first field after the object header),
    checked by reading the options through it and comparing with Python's view."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        return None
    if int(lib.SSL_CTX_get_options(pointer)) != int(ctx.options):
        return None
    return int(pointer)


def set_ticket_keys(ctx: ssl.SSLContext, key: bytes) -> bool:
    """Give `ctx` these session ticket keys (80 bytes); False (logged) where it cannot be done:
    resumption then works within each worker only."""
    if len(key) != TICKET_KEY_BYTES:
        raise ValueError(f"a ticket key is {TICKET_KEY_BYTES} bytes")
    try:
        lib = _ssl_library()
        pointer = _ssl_ctx_pointer(ctx, lib) if lib is not None else None
        if lib is None or pointer is None:
            raise OSError("libssl or the SSL_CTX of the context not found")
        buf = ctypes.create_string_buffer(key, len(key))
        if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(key), buf) != 1:
            raise OSError("SSL_CTX_ctrl refused the keys")
        back = ctypes.create_string_buffer(len(key))
        lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, len(key), back)
        if back.raw != key:
            raise OSError("the keys read back differ")
    except (OSError, ValueError, AttributeError) as exc:
        log.info(
            "TLS: session tickets stay per worker (%s); a resumed session that reaches another "
            "worker makes a full handshake",
            exc,
        )
        return False
    return True
