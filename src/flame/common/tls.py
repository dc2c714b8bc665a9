"""TLS for every FLAME listener and client: modern server contexts, client verification against
the platform CA, and the rule that a token never crosses the network in clear (issue 15).

Standard library only (the service routers import it in every worker); certificates are made
and checked by `flame.common.pki`, which needs `cryptography`.

    ctx = server_context()                       # TLS 1.2+, ECDHE + AEAD, ALPN http/1.1
    load_chain(ctx, chain_pem, key_pem)          # from memory: the key never touches a disk
    verify = client_verify(config.ca_file)       # for httpx: the platform CA, or the system's
    require_private_url(url, token)              # UserError: a token to http://<not loopback>

Server settings: TLS 1.2 and 1.3 only; for TLS 1.2, ECDHE key exchange with AES-GCM or
ChaCha20-Poly1305 (forward secrecy, AEAD; no RSA key exchange, CBC, RC4, 3DES, SHA-1 MACs);
TLS 1.3's suites are OpenSSL's (all AEAD); no compression, no renegotiation; the server picks
the cipher. Session resumption: TLS 1.3 tickets (OpenSSL's stateless tickets, two per
handshake) and TLS 1.2 tickets and session ids. No OCSP stapling: clients that require it
(none of the common ones do for a certificate without the must-staple extension) fall back to
their own revocation checks, as for any server that does not staple.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from flame.common.errors import UserError

__all__ = [
    "ALPN",
    "MODERN_CIPHERS",
    "ClearTextToken",
    "client_verify",
    "is_loopback_host",
    "load_chain",
    "require_private_url",
    "server_context",
]

# TLS 1.2 suites: ECDHE (forward secrecy) with an AEAD; TLS 1.3 suites are not set by this.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
ALPN = ("http/1.1",)


class ClearTextToken(UserError):
    """A bearer token would cross the network unencrypted: refused before anything is sent."""

    code: ClassVar[str] = "clear_text_token"
    http_status: ClassVar[int] = 400


def server_context(*, alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
    """A server context with modern defaults and no certificate yet (see `load_chain`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def harden(ctx: ssl.SSLContext) -> None:
    """TLS 1.2+, ECDHE + AEAD suites, no compression or renegotiation, server's preference."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION


def load_chain(ctx: ssl.SSLContext, chain_pem: str | bytes, key_pem: str | bytes) -> None:
    """Load a certificate chain and its key from memory into `ctx`.

    `SSLContext.load_cert_chain` only reads files: the PEM goes through an anonymous memory
    file (memfd, Linux) so the key is never written to a disk; elsewhere through a private
    temporary file (0600, removed at once).
    """
    chain = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
    key = key_pem.encode() if isinstance(key_pem, str) else key_pem
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fds = []
        try:
            for data in (chain, key):
                fd = memfd("flame-tls", 0)
                fds.append(fd)
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        except FileNotFoundError:
            pass  # no /proc: the temporary-file way below
        finally:
            for fd in fds:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="flame-tls-") as tmp:
        paths = []
        for name, data in (("chain.pem", chain), ("key.pem", key)):
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(str(path))
        ctx.load_cert_chain(paths[0], paths[1])


def client_verify(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """What to pass as httpx's `verify`: a context trusting `ca_file` (the platform CA) and
    the system's CAs, or True (the system's CAs only) when there is no CA file."""
    if ca_file is None:
        return True
    path = Path(ca_file)
    if not path.is_file():
        raise UserError(
            f"CA file {path} does not exist; set ca_file in the config to the platform CA "
            "certificate ('flame up' prints where it is) or remove the setting",
            ca_file=str(path),
        )
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(path))
    return ctx


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_private_url(url: str, token: str | None, *, what: str = "the API") -> None:
    """Raise `ClearTextToken` if a token would go to `url` over plain HTTP off this host.

    Loopback (`flame up`, every component on one machine) stays plain HTTP; anything else
    needs https:// (with the platform CA in `ca_file` when the server's certificate comes
    from the platform)."""
    if not token:
        return
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return
    raise ClearTextToken(
        f"refusing to send a token to {what} at {url} in clear: use https:// (start the "
        "server with --tls-cert/--tls-key and set ca_file in the config to the CA that issued "
        "its certificate), or reach it over loopback",
        url=url,
    )
