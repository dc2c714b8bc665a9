"""The endpoint certificates of process SFEs whose image opts in to hop-by-hop TLS (SFR-19;
docs/tls.md): fetched from the PCE before each start, written into the SFE's private home as
it starts, the state document told what is on (never the key). Kept apart from process.py,
which only asks `fetch` before a start and `install` while preparing one."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from flame.sfemc.vim._sfe import Sfe, tls_on
from flame.sfemc.vim.base import VimError
from flame.sfemc.vim.endpoint_tls import (
    CertUnavailable,
    EndpointCertSource,
    HopTlsOff,
    remove_cert_files,
    write_cert_files,
)

__all__ = ["RENEW_RETRY_S", "SfeCerts", "StateWriter"]

log = logging.getLogger("flame.sfemc.vim.process")  # the lifecycle's log, as before

RENEW_RETRY_S = 30.0  # a failed certificate renewal is tried again after this


class StateWriter(Protocol):
    """Records changes in an SFE's state document (on disk)."""

    def __call__(self, rec: Sfe, **changes: Any) -> None: ...


class SfeCerts:
    """`source`: the PCE (None: opted-in SFEs run plain and say so); `record`: the VIM's
    state writer, told `tls` (on with CA, expiry and fingerprint; off with why) and `reason`."""

    def __init__(self, source: EndpointCertSource | None, record: StateWriter) -> None:
        self.source = source
        self._record = record

    async def fetch(self, rec: Sfe, host: str) -> None:
        """A fresh certificate for `host` kept in `rec.cert` for the next start (at every
        start: a restart renews it); none when the image does not opt in or the PCE's switch
        is off. VimError (temporary) when one is wanted but cannot be had now."""
        rec.cert = None
        if not rec.manifest().tls:
            return
        if self.source is None:
            self._off(rec, "no PCE to ask for an endpoint certificate (no --pce)")
            return
        try:
            rec.cert = await self.source.issue(host)
        except HopTlsOff as exc:
            self._off(rec, f"the PCE says: {exc}")
        except CertUnavailable as exc:
            self._record(rec, reason=str(exc))
            raise VimError(rec.name, f"hop-by-hop TLS: {exc}; will retry") from None

    def install(
        self, rec: Sfe, home: Path, view: str, owner: tuple[int, int] | None
    ) -> dict[str, str]:
        """Write the fetched certificate into `home` and return FLAME_TLS_* for the SFE, or
        remove an earlier one: an SFE never starts with a certificate it was not given now."""
        cert, rec.cert = rec.cert, None
        if cert is None:
            remove_cert_files(home)
            if tls_on(rec):
                self._record(rec, tls=None)
            return {}
        files = write_cert_files(home, cert, view, owner)
        self._record(
            rec,
            tls={
                "on": True,
                "issued_at": time.time(),
                "ca": cert.ca,
                "not_after": cert.not_after,
                "fingerprint_sha256": cert.fingerprint,
            },
        )
        log.info(
            "%s: endpoint certificate for %s, sha256 %s", rec.name, cert.host, cert.fingerprint
        )
        return files

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()

    def _off(self, rec: Sfe, why: str) -> None:
        note = f"hop-by-hop TLS is off, serving plain HTTP: {why}"
        log.warning("%s (image opts in to TLS): %s", rec.name, note)
        with (rec.path / "sfe.log").open("a", encoding="utf-8") as out:
            out.write(f"[flame] {note}\n")
        self._record(rec, tls={"on": False, "note": note})
