"""Content certificates (SFR-22, SFR-23): the PCE's glue to `flame.sfr.certs.CertManager`."""

from __future__ import annotations

from typing import Any

from flame.common.auth import Principal, require_router
from flame.sfr.certs import CertBundle, CertManager, CertRecord
from flame.sfr.registry import normalise_fqdn
from flame.sfr.service.core import MAX_WAIT_S, CertsDisabled, _Core, _State


class _Certificates(_Core):
    """Certificates of the routed FQDNs and the SRs' bundles."""

    # -- content certificates (SFR-22, SFR-23) --------------------------------------------------

    def _cert_manager(self) -> CertManager:
        if self._certs is None:
            raise CertsDisabled(
                "this PCE manages no certificates (start it with a state directory: "
                "'flame serve pce' does)"
            )
        return self._certs

    def _cert_fqdn(self, principal: Principal, fqdn: str, action: str) -> tuple[_State, str]:
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, action)
        return state, fqdn

    def certs(self, principal: Principal) -> list[dict[str, Any]]:
        """Metadata of the certificates of the FQDNs `principal` manages (no chain, no key)."""
        certs = self._cert_manager()
        state = self._active()
        return [
            r.public(redirect_http=certs.redirects.get(f, False), with_chain=False)
            for f, r in sorted(certs.records.items())
            if state.registry.may_manage(principal, f)
        ]

    def cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """One FQDN's certificate chain and metadata (never its key)."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "read the certificate of")
        return certs.get(fqdn).public(redirect_http=certs.redirects.get(fqdn, False))

    def put_cert(
        self,
        principal: Principal,
        fqdn: str,
        chain_pem: str,
        key_pem: str,
        redirect_http: bool | None = None,
    ) -> dict[str, Any]:
        """Upload an FQDN's chain and key (SFR-22); it replaces the platform's certificate."""
        certs = self._cert_manager()
        state, fqdn = self._cert_fqdn(principal, fqdn, "upload a certificate for")
        record = certs.put_manual(fqdn, state.registry.owner_of(fqdn), chain_pem, key_pem)
        if redirect_http is not None:
            certs.set_redirect(fqdn, redirect_http)
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False))

    def set_cert_options(
        self, principal: Principal, fqdn: str, *, redirect_http: bool
    ) -> dict[str, Any]:
        """Redirect plain HTTP for `fqdn` to https at the SRs (or stop)."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "change the TLS options of")
        certs.set_redirect(fqdn, redirect_http)
        self._sync_certs(force=True)
        return {"fqdn": fqdn, "redirect_http": redirect_http}

    def delete_cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """Remove an uploaded certificate; the platform issues one again if the FQDN is
        delegated and routed."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "delete the certificate of")
        record = certs.delete_manual(fqdn)
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False), with_chain=False)

    def renew_cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """Issue an FQDN's platform certificate again now (SFR-23)."""
        certs = self._cert_manager()
        state, fqdn = self._cert_fqdn(principal, fqdn, "renew the certificate of")
        record: CertRecord = certs.renew(fqdn, state.registry.owner_of(fqdn))
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False))

    def endpoint_certificate(
        self, principal: Principal, host: str, days: float | None
    ) -> dict[str, Any]:
        """A server certificate for a TLS endpoint on `host` (hop TLS; router or operator)."""
        require_router(principal)
        return self._cert_manager().identities.endpoint_cert(host, days)

    def ca_certificate(self) -> str:
        return self._cert_manager().ca_pem()

    async def wait_certs(
        self, principal: Principal, sr: str, since: int, timeout: float
    ) -> tuple[CertBundle | None, CertBundle, str]:
        """(the SR's bundle once newer than `since` or None after `timeout`, the current one,
        the store's generation)."""
        require_router(principal)
        certs = self._cert_manager()
        self._table(self._active(), sr)  # 404 for an unknown SR
        bundle = await certs.wait(
            sr, since, min(max(timeout, 0.0), MAX_WAIT_S), lambda: self._draining
        )
        return bundle, certs.bundle(sr), certs.generation

    def cert_body(self, bundle: CertBundle) -> bytes:
        return self._cert_manager().body(bundle)
