"""Whether a process SFE answers: its health check (HTTP, TLS or just the port) and the wait
for it to pass at boot. Kept apart from process.py, which drives the lifecycle; the prober only
reads the SFE's record and asks over the network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from flame.sfemc.vim._proc import tail
from flame.sfemc.vim._sfe import Sfe, exit_code, tls_on, url_host
from flame.sfemc.vim.base import HealthSpec, VimError
from flame.sfemc.vim.endpoint_tls import probe_tls

__all__ = ["POLL_S", "HealthProber", "boot_error"]

POLL_S = 0.02  # health polling while booting: boot-to-healthy time is a product target


class HealthProber:
    """Probes SFEs at the address `host_of(rec)` gives (their cluster host's)."""

    def __init__(self, host_of: Callable[[Sfe], str]) -> None:
        self._host_of = host_of
        self._http: httpx.AsyncClient | None = None  # made on the first HTTP check

    def target(self, rec: Sfe) -> tuple[HealthSpec | None, int | None]:
        """The declared check (the template's, else the image's) and the host port it uses."""
        health = rec.spec().health or rec.manifest().health
        ports: dict[str, int] = rec.doc["ports"]
        if not ports:
            return health, None
        name = health.port if health and health.port else next(iter(ports))
        return health, ports.get(name, next(iter(ports.values())))

    async def probe(self, rec: Sfe) -> bool:
        health, port = self.target(rec)
        if port is None:
            return rec.alive()
        host = self._host_of(rec)
        if tls_on(rec):  # the SFE serves (mutual) TLS with its platform certificate
            return await probe_tls(
                host,
                port,
                health.path if health else "/",
                str(rec.doc["tls"]["ca"]),
                health.timeout_s if health else 1.0,
            )
        if health is None:  # no HTTP check declared: the port accepting connections will do
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                return False
            writer.close()
            return True
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False)
        try:
            response = await self._http.get(
                f"http://{url_host(host)}:{port}{health.path}", timeout=health.timeout_s
            )
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400

    async def wait_healthy(self, rec: Sfe, timeout: float) -> None:
        """Until the check passes (`rec.healthy` set); VimError with the SFE's last output when
        the process exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not rec.alive():
                code = exit_code(rec)
                how = f"exited with status {code}" if code is not None else "exited"
                raise boot_error(rec, f"the process {how} before its health check passed")
            if await self.probe(rec):
                rec.healthy = True
                return
            if time.monotonic() >= deadline:
                health, port = self.target(rec)
                what = f"GET {health.path} on port {port}" if health else f"port {port}"
                raise boot_error(rec, f"not healthy after {timeout:g}s ({what} failed)")
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def boot_error(rec: Sfe, reason: str) -> VimError:
    lines = tail(rec.path / "sfe.log", 20)
    shown = "\n".join(lines[-5:])
    text = f"{reason}; last output:\n{shown}" if lines else f"{reason}; no output"
    return VimError(rec.name, text, logs=lines)
