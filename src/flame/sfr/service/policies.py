"""Routing policies per FQDN (SFR-5, SFR-6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from flame.common.auth import Principal
from flame.sfr.models import RoutingPolicy
from flame.sfr.registry import NotFound, normalise_fqdn
from flame.sfr.service.core import _Core, _State
from flame.sfr.store import Writer


class _Policies(_Core):
    """Routing policies: set, read, delete; each redistributes the FQDN's routes."""

    # -- policies (SFR-5, SFR-6) ----------------------------------------------------------------

    def policy(self, principal: Principal, fqdn: str) -> RoutingPolicy:
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, "read the policy of")
        policy = state.policies.get(fqdn)
        if policy is None:
            raise NotFound(
                f"no routing policy for '{fqdn}' (the default: lowest latency)", fqdn=fqdn
            )
        return policy

    def policies(self, principal: Principal) -> list[RoutingPolicy]:
        state = self._active()
        return [
            p for f, p in sorted(state.policies.items()) if state.registry.may_manage(principal, f)
        ]

    def set_policy(self, principal: Principal, policy: RoutingPolicy) -> Mapping[str, int]:
        """Set an FQDN's routing policy; return the SRs with new table versions."""
        state = self._active()
        fqdn = normalise_fqdn(policy.fqdn)
        if fqdn != policy.fqdn:
            policy = replace(policy, fqdn=fqdn)
        state.registry.require_fqdn(principal, fqdn, "set the policy of")
        state.engine.check_policy(policy)
        if state.policies.get(fqdn) == policy:
            return {}
        return self._policy_changed(state, fqdn, policy)

    def delete_policy(self, principal: Principal, fqdn: str) -> Mapping[str, int]:
        self.policy(principal, fqdn)  # authorises; NotFound if there is none
        return self._policy_changed(self._active(), normalise_fqdn(fqdn), None)

    def _policy_changed(
        self, state: _State, fqdn: str, policy: RoutingPolicy | None
    ) -> Mapping[str, int]:
        with self._committing():
            if policy is None:
                del state.policies[fqdn]
            else:
                state.policies[fqdn] = policy
            updates = self._recompute(state, state.topology.service_routers, frozenset({fqdn}))

            def persist(w: Writer) -> None:
                if policy is None:
                    w.delete_policy(fqdn)
                else:
                    w.put_policy(policy)

            self._commit(state, persist, updates)
        return {sr: t.table.version for sr, t in sorted(updates.items())}
