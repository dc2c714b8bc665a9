"""Hop-by-hop TLS for Kubernetes SFEs (SFR-19, issue 15 item 3; docs/tls.md): the endpoint
certificate an opted-in SFE gets from the PCE, and the renewal of running ones with a third of
the certificate's life left. The key goes into the Secret document only: never into an
annotation, a status, an error or a log line (the Deployment's ``flame/tls`` annotation keeps
the fingerprint and the dates)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flame.sfemc.vim import _k8s_manifests as m
from flame.sfemc.vim._sfe_certs import RENEW_RETRY_S
from flame.sfemc.vim.base import EndpointSpec, VimError
from flame.sfemc.vim.endpoint_tls import CertUnavailable, EndpointCertSource, HopTlsOff

__all__ = ["CertRenewals", "K8sCerts", "renew_at", "tls_state"]

log = logging.getLogger("flame.sfemc.vim.kubernetes")

TlsState = dict[str, Any]


def tls_state(dep: Any) -> TlsState | None:
    """The ``flame/tls`` annotation of a Deployment (lightkube object): None when absent."""
    annotations = dep.metadata.annotations if dep.metadata else None
    raw = (annotations or {}).get(m.ANNOTATION_TLS)
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
        if isinstance(doc, dict):
            return doc
    return None


def renew_at(tls: TlsState) -> float:
    """Epoch seconds: when a third of the certificate's life is left (as SR identities)."""
    issued, until = float(tls["issued_at"]), float(tls["not_after"])
    return until - (until - issued) / 3


class K8sCerts:
    """Asks `source` (the PCE) for endpoint certificates; None: opted-in SFEs run plain."""

    def __init__(self, source: EndpointCertSource | None) -> None:
        self.source = source

    async def issue(
        self, spec: EndpointSpec, host: str, owner_uid: str
    ) -> tuple[TlsState, dict[str, Any] | None]:
        """The TLS state to annotate and the Secret to store (None: plain, the switch off)."""
        if self.source is None:
            return self._off(spec, "no PCE to ask for an endpoint certificate (no --pce)"), None
        try:
            cert = await self.source.issue(host)
        except HopTlsOff as exc:
            return self._off(spec, f"the PCE says: {exc}"), None
        except CertUnavailable as exc:
            raise VimError(spec.sfe, f"hop-by-hop TLS: {exc}; will retry") from None
        log.info("%s: endpoint certificate for %s, sha256 %s", spec.sfe, host, cert.fingerprint)
        tls = {
            "on": True,
            "host": host,
            "issued_at": time.time(),
            "not_after": cert.not_after,
            "fingerprint_sha256": cert.fingerprint,
        }
        return tls, m.tls_secret(spec, cert, owner_uid)

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()

    @staticmethod
    def _off(spec: EndpointSpec, why: str) -> TlsState:
        note = f"hop-by-hop TLS is off, serving plain HTTP: {why}"
        log.warning("%s (image opts in to TLS): %s", spec.sfe, note)
        return {"on": False, "note": note}


class CertRenewals:
    """One task per running TLS SFE that calls `renew(sfe)` (which returns the new state, or
    None when the SFE no longer runs with TLS) when its certificate is due; a failed renewal
    (the PCE away) is tried again every `RENEW_RETRY_S` while the old certificate serves."""

    def __init__(self, renew: Callable[[str], Awaitable[TlsState | None]]) -> None:
        self._renew = renew
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, sfe: str, tls: TlsState | None) -> None:
        if not (tls and tls.get("on")):
            return
        task = self._tasks.get(sfe)
        if task is None or task.done():
            self._tasks[sfe] = asyncio.get_running_loop().create_task(
                self._run(sfe, tls), name=f"kubernetes-vim certificate renewal {sfe}"
            )

    async def cancel(self, sfe: str) -> None:
        task = self._tasks.pop(sfe, None)
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for sfe in list(self._tasks):
            await self.cancel(sfe)

    async def _run(self, sfe: str, tls: TlsState) -> None:
        current: TlsState | None = tls
        while current and current.get("on"):
            await asyncio.sleep(max(0.0, renew_at(current) - time.time()))
            try:
                current = await self._renew(sfe)
            except VimError as exc:  # the old certificate serves on meanwhile
                log.warning("%s: certificate not renewed now: %s", sfe, exc.reason)
                await asyncio.sleep(RENEW_RETRY_S)
            except Exception:
                log.exception("%s: certificate renewal failed; retrying", sfe)
                await asyncio.sleep(RENEW_RETRY_S)
