"""Registrations and delegations (SFR-10, SFR-11, SFEMC-7): endpoints connect and disconnect,
names are delegated to tenants.
"""

from __future__ import annotations

import logging

from flame.common.auth import Principal
from flame.common.errors import UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.models import Endpoint
from flame.sfr.registry import Delegation, Registration, RegistryChange, normalise_fqdn
from flame.sfr.service.core import _Core, _State
from flame.sfr.store import Writer

log = logging.getLogger("flame.sfr.service")


class _Endpoints(_Core):
    """Registrations and delegations, persisted and redistributed."""

    # -- registrations and delegations (SFR-10, SFR-11, SFEMC-7) ----------------------------------

    def registrations(self, principal: Principal) -> list[Registration]:
        return self._active().registry.registrations(principal)

    @property
    def registry_version(self) -> int:
        return self._active().registry.version

    def register(self, principal: Principal, endpoint: Endpoint) -> RegistryChange:
        """Connect an endpoint (the SFEMC, or a tenant for its own names) and redistribute."""
        state = self._active()
        state.registry.require_fqdn(principal, normalise_fqdn(endpoint.fqdn))  # 403 before 400
        if endpoint.cluster not in state.topology.clusters:
            hint = did_you_mean(endpoint.cluster, state.topology.clusters, dotted=False)
            raise UserError(
                f"endpoint '{endpoint.sfe}': unknown cluster '{endpoint.cluster}'"
                + (f" ({hint})" if hint else ""),
                sfe=endpoint.sfe,
                cluster=endpoint.cluster,
            )
        change = state.registry.register(principal, endpoint)
        if change.changed:
            self._registry_changed(state, change)
        return change

    def withdraw(self, principal: Principal, sfe: str) -> RegistryChange:
        """Disconnect an endpoint: new requests go elsewhere once SRs have the new tables."""
        state = self._active()
        change = state.registry.withdraw(principal, sfe)
        self._registry_changed(state, change)
        return change

    def _registry_changed(self, state: _State, change: RegistryChange) -> None:
        with self._committing():
            updates = self._recompute(state, state.topology.service_routers, change.fqdns)

            def persist(w: Writer) -> None:
                if change.after is not None:
                    w.put_registration(change.after)
                elif change.before is not None:
                    w.delete_registration(change.before.endpoint.sfe)
                w.set_registry_version(state.registry.version)

            self._commit(state, persist, updates)
        log.info(
            "endpoint %s %s for %s: %d new table version(s)",
            next(r.endpoint.sfe for r in (change.after, change.before) if r is not None),
            "registered" if change.after is not None else "withdrawn",
            ", ".join(sorted(change.fqdns)),
            len(updates),
        )

    def delegations(self, principal: Principal) -> list[Delegation]:
        return self._active().registry.delegations(principal)

    def delegate(self, principal: Principal, name: str, tenant: str) -> Delegation:
        state = self._active()
        version = state.registry.version
        delegation = state.registry.delegate(principal, name, tenant)
        if state.registry.version != version:
            with self._committing():

                def persist(w: Writer) -> None:
                    w.put_delegation(delegation)
                    w.set_registry_version(state.registry.version)

                self._commit(state, persist, {})
            self._sync_certs(force=True)
        return delegation

    def undelegate(self, principal: Principal, name: str) -> Delegation:
        state = self._active()
        delegation = state.registry.undelegate(principal, name)
        with self._committing():

            def persist(w: Writer) -> None:
                w.delete_delegation(delegation.name)
                w.set_registry_version(state.registry.version)

            self._commit(state, persist, {})
        self._sync_certs(force=True)  # its certificates leave every SR
        return delegation
