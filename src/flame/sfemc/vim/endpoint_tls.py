"""Hop-by-hop TLS for the SFEs that opt in (SFR-19, issue 15 item 3; docs/tls.md).

An SF image whose manifest says `tls: true` can serve HTTPS with a platform certificate
(`flame.media.serving.serve_app` does, given FLAME_TLS_CERT/KEY/CA). Before each start of such
an SFE the process VIM asks the PCE for a server certificate for the SFE's host address
(`POST /v1/certs/endpoint`, with the token the SFEMC already uses towards the PCE), writes the
chain, key and CA into the SFE's private directory (`home/.flame-tls/`, mode 0600, owned by the
SFE's uid) and passes their paths in its environment. The PCE answering 409 `hop_tls_off`
means the operator has not switched hop TLS on: the SFE runs plain (`HopTlsOff`), and says so
in its log.

Health checks of a TLS SFE verify its certificate against the CA for its host and accept the
SFE asking for a client certificate the VIM does not hold (only SRs have clientAuth
identities) as proof that it serves TLS; an SFE that still answers plain HTTP on that port, or
with a certificate of another CA or host, is not healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import httpx

from flame.common.atomicfile import atomic_write_private
from flame.common.tls import require_private_url

__all__ = [
    "TLS_DIR",
    "CertUnavailable",
    "EndpointCert",
    "EndpointCertSource",
    "EndpointCertsSetting",
    "HopTlsOff",
    "PceEndpointCerts",
    "probe_tls",
    "remove_cert_files",
    "write_cert_files",
]

TLS_DIR = ".flame-tls"  # inside the SFE's private home
_FILES = {"FLAME_TLS_CERT": "cert.pem", "FLAME_TLS_KEY": "key.pem", "FLAME_TLS_CA": "ca.pem"}


@dataclass(frozen=True, slots=True)
class EndpointCert:
    host: str
    chain: str
    key: str
    ca: str
    not_after: float  # epoch seconds
    fingerprint: str

    def __repr__(self) -> str:  # never the key, whoever logs this
        return f"EndpointCert({self.host!r}, sha256={self.fingerprint[:16]}...)"


class HopTlsOff(Exception):
    """The PCE's hop TLS switch is off (409 `hop_tls_off`): the SFE runs plain."""


class CertUnavailable(Exception):
    """No PCE answered with a certificate now (unreachable, refused): retry later."""


class EndpointCertSource(Protocol):
    async def issue(self, host: str) -> EndpointCert:
        """A server certificate for `host`; HopTlsOff when the switch is off, CertUnavailable
        when it cannot be had now."""
        ...

    async def close(self) -> None: ...


class _CertHelper(Protocol):
    source: EndpointCertSource | None


_Helper = TypeVar("_Helper", bound=_CertHelper)


class EndpointCertsSetting(Generic[_Helper]):
    """A VIM's `endpoint_certs` setting, kept by its certificate helper `self._certs`."""

    _certs: _Helper

    @property
    def endpoint_certs(self) -> EndpointCertSource | None:
        """Where opted-in SFEs get their certificates (settable: the next start asks it)."""
        return self._certs.source

    @endpoint_certs.setter
    def endpoint_certs(self, source: EndpointCertSource | None) -> None:
        self._certs.source = source


class PceEndpointCerts:
    """`POST /v1/certs/endpoint` at the PCEs (active first), with an operator or router token."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
        days: float | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        for url in self.urls:
            require_private_url(url, token, what="the PCE")
        self.days = days
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=verify,
            trust_env=False,
        )

    async def issue(self, host: str) -> EndpointCert:
        body: dict[str, object] = {"host": host}
        if self.days is not None:
            body["days"] = self.days
        problems: list[str] = []
        for url in self.urls:
            try:
                response = await self._http.post(f"{url}/v1/certs/endpoint", json=body)
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {type(exc).__name__} {exc}")
                continue
            if response.status_code == 200:
                doc = response.json()
                return EndpointCert(
                    host=host,
                    chain=str(doc["chain"]),
                    key=str(doc["key"]),
                    ca=str(doc["ca"]),
                    not_after=float(doc["not_after"]),
                    fingerprint=str(doc.get("fingerprint_sha256", "")),
                )
            error = _error(response)
            if response.status_code == 409 and error[0] == "hop_tls_off":
                raise HopTlsOff(error[1])
            problems.append(f"{url}: HTTP {response.status_code} {error[0]}: {error[1]}")
        raise CertUnavailable(
            "no endpoint certificate from the PCE (" + "; ".join(problems or ["no PCE"]) + ")"
        )

    async def close(self) -> None:
        await self._http.aclose()


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        doc = response.json()
        return str(doc.get("error", "")), str(doc.get("message", ""))[:300]
    except ValueError:
        return "", response.text[:300]


def write_cert_files(
    home: Path, cert: EndpointCert, view: str, owner: tuple[int, int] | None
) -> dict[str, str]:
    """Write the three files into `home/.flame-tls/` (0700 directory, 0600 files, owned by
    `owner` when given) and return FLAME_TLS_* as the SFE sees them (`view`: its home's path
    inside its sandbox, or the host path when unconfined)."""
    directory = home / TLS_DIR
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        directory.unlink()  # never write through something the SFE planted
    directory.mkdir(mode=0o700, exist_ok=True)
    contents = {"cert.pem": cert.chain, "key.pem": cert.key, "ca.pem": cert.ca}
    for name, text in contents.items():
        path = directory / name
        with contextlib.suppress(FileNotFoundError):
            if path.is_symlink() or path.is_dir():
                path.unlink()
        atomic_write_private(path, text.encode())  # 0600 from the start
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
    directory.chmod(0o700)
    if owner is not None:
        os.chown(directory, *owner, follow_symlinks=False)
    return {env: f"{view.rstrip('/')}/{TLS_DIR}/{name}" for env, name in _FILES.items()}


def remove_cert_files(home: Path) -> None:
    directory = home / TLS_DIR
    if directory.is_symlink():
        directory.unlink()
        return
    for name in _FILES.values():
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (directory / name).unlink()


async def probe_tls(host: str, port: int, path: str, ca_pem: str, timeout: float) -> bool:
    """Is a TLS server with a certificate of `ca_pem` for `host` answering on host:port?

    The handshake must verify (the platform CA, the host's name or address in the
    certificate): a plain HTTP listener, another CA's certificate or another name fail it.
    Then GET `path`: 200-399 is healthy, another status is not, and so is the connection
    closed without an answer: what an SFE requiring a client certificate does to the VIM,
    which holds none (only SRs have clientAuth identities; uvicorn closes without sending
    TLS 1.3's `certificate required` alert). So for such SFEs the check proves the TLS
    listener and its certificate, not the application's health path."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host
            )
            target = f"[{host}]" if ":" in host else host
            request = f"GET {path} HTTP/1.1\r\nHost: {target}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            try:
                await writer.drain()
                line = await reader.readline()
            except (ssl.SSLError, ConnectionError):
                line = b""  # refused after the handshake: no client certificate
    except (OSError, TimeoutError):  # ssl.SSLError (a failed handshake) is an OSError
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if not line:
        return True
    parts = line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
