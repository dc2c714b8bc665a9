"""The FQDN registry: which endpoint serves which name, and who may say so (SFR-10, SFR-11, SFEMC-7).

Registrations come from two places. The topology file's `registrations:` section (SFR-10,
registration by configuration) gives endpoints the operator owns and only the file can change.
The PCE API (SFR-11, registration by the distribution protocol) gives endpoints that the SFEMC
connects, or that a tenant's own tooling registers.

Authorisation lives here, in one place, so the API stays a thin translation:

* the operator may register, withdraw and delegate anything;
* a tenant may register only FQDNs it owns. Ownership comes from delegations the operator makes
  (`delegate("vod.example", "acme")`): the tenant then owns `vod.example` and every name under
  it (`*.vod.example`), unless a more specific delegation gives a subdomain to someone else,
  as DNS zone cuts do (SFEMC-7 delegated name registration);
* a tenant sees and withdraws only its own registrations; another tenant's endpoint looks
  exactly like one that does not exist.

Every change bumps one registry version, so observers can tell "nothing changed" cheaply.
Pure logic: no I/O, no clock. `flame.sfr.service` persists what changes.

Exception tree (all `UserError`, so the API maps them to 4xx and the CLI to exit 1)::

    UserError                 400  a malformed name or endpoint
    ├── PermissionDenied      403  (flame.common) a tenant touching a name it does not own
    ├── NotFound              404  no such registration, delegation, policy, node or SR
    └── Conflict              409  the request clashes with the configuration or another owner
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from flame.common.auth import Principal, Role, validate_tenant_id
from flame.common.errors import PermissionDenied, UserError
from flame.sfr.models import Endpoint
from flame.topology.loader import fqdn_problem, sfe_id_problem
from flame.topology.model import StaticRegistration

__all__ = [
    "Conflict",
    "Delegation",
    "NotFound",
    "Origin",
    "Registration",
    "Registry",
    "RegistryChange",
    "normalise_fqdn",
]


class NotFound(UserError):
    """The thing named does not exist (or, for a tenant, is not its own: the answer is the same)."""

    code: ClassVar[str] = "not_found"
    http_status: ClassVar[int] = 404


class Conflict(UserError):
    """The request is well formed but clashes with what exists; change the request, not retry."""

    code: ClassVar[str] = "conflict"
    http_status: ClassVar[int] = 409


class Origin(enum.StrEnum):
    CONFIG = "config"  # the topology file (SFR-10); changed only by editing the file
    API = "api"  # the distribution protocol (SFR-11)


@dataclass(frozen=True, slots=True)
class Registration:
    """An endpoint serving an FQDN, with where it came from. `endpoint.tenant` is the owner:
    None means the operator."""

    endpoint: Endpoint
    origin: Origin = Origin.API

    @property
    def owner(self) -> str | None:
        return self.endpoint.tenant

    def to_dict(self) -> dict[str, Any]:
        return {**self.endpoint.to_dict(), "origin": self.origin.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Registration:
        return cls(Endpoint.from_dict(data), Origin(data.get("origin", Origin.API.value)))


@dataclass(frozen=True, slots=True)
class Delegation:
    """`tenant` owns `name` and every name under it (SFEMC-7)."""

    name: str
    tenant: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tenant": self.tenant}


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """What a register or withdraw did: `before`/`after` are None where nothing was (or is)."""

    before: Registration | None
    after: Registration | None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def fqdns(self) -> frozenset[str]:
        """The names whose routes may differ now (two when an endpoint moved to another FQDN)."""
        return frozenset(r.endpoint.fqdn for r in (self.before, self.after) if r is not None)


def normalise_fqdn(name: str, *, what: str = "FQDN") -> str:
    """Lowercase, without a trailing dot; UserError naming the problem if it is not a DNS name."""
    if not isinstance(name, str):
        raise UserError(f"{what} must be a string, not {type(name).__name__}")
    fqdn = name.strip().lower().removesuffix(".")
    if fqdn.startswith("*."):
        raise UserError(
            f"{what} '{name}': wildcards are not names; use '{fqdn[2:]}', which also covers "
            "every name under it",
            fqdn=name,
        )
    problem = fqdn_problem(fqdn)
    if problem:
        raise UserError(f"{what} '{name}' {problem}", fqdn=name)
    return fqdn


def _check_endpoint(endpoint: Endpoint) -> Endpoint:
    problem = sfe_id_problem(endpoint.sfe)
    if problem:
        raise UserError(f"endpoint id '{endpoint.sfe}' {problem}", sfe=endpoint.sfe)
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise UserError(
            f"endpoint '{endpoint.sfe}': host must be an IP address (the SR connects to it "
            f"without DNS), got '{endpoint.host}'",
            sfe=endpoint.sfe,
        ) from None
    if not 1 <= endpoint.port <= 65535:
        raise UserError(
            f"endpoint '{endpoint.sfe}': port must be from 1 to 65535, got {endpoint.port}",
            sfe=endpoint.sfe,
        )
    if not endpoint.weight > 0 or endpoint.weight == float("inf"):
        raise UserError(
            f"endpoint '{endpoint.sfe}': weight must be a positive finite number, "
            f"got {endpoint.weight}",
            sfe=endpoint.sfe,
        )
    return replace(endpoint, fqdn=normalise_fqdn(endpoint.fqdn))


class Registry:
    """Registrations by endpoint id and delegations by name, with the rules of who may change them."""

    def __init__(self) -> None:
        self._registrations: dict[str, Registration] = {}
        self._delegations: dict[str, str] = {}  # name -> tenant
        self.version = 0

    @classmethod
    def restore(
        cls,
        registrations: Iterable[Registration],
        delegations: Iterable[Delegation],
        version: int,
    ) -> Registry:
        """Rebuild a registry from persisted state (a restart, or a standby taking over)."""
        registry = cls()
        registry._registrations = {r.endpoint.sfe: r for r in registrations}
        registry._delegations = {d.name: d.tenant for d in delegations}
        registry.version = version
        return registry

    def configure(self, statics: Iterable[StaticRegistration]) -> list[Registration]:
        """Install the topology file's static entries (SFR-10), owned by the operator.

        They replace API registrations with the same endpoint id, which are returned: the file
        is the operator's word and wins. Static entries no longer in the file go. Nothing is
        authorised here: the file is trusted.
        """
        displaced: list[Registration] = []
        statics = list(statics)
        in_file = {static.sfe for static in statics}
        for sfe, registration in list(self._registrations.items()):
            if registration.origin is Origin.CONFIG and sfe not in in_file:
                del self._registrations[sfe]
                self.version += 1
        for static in statics:
            endpoint = _check_endpoint(
                Endpoint(
                    sfe=static.sfe,
                    fqdn=static.fqdn,
                    cluster=static.cluster,
                    host=static.host,
                    port=static.port,
                )
            )
            old = self._registrations.get(static.sfe)
            new = Registration(endpoint, Origin.CONFIG)
            if old is not None and old.origin is Origin.API:
                displaced.append(old)
            if old != new:
                self._registrations[static.sfe] = new
                self.version += 1
        return displaced

    # -- reading ---------------------------------------------------------------------------

    def get(self, sfe: str) -> Registration | None:
        return self._registrations.get(sfe)

    def registrations(self, principal: Principal | None = None) -> list[Registration]:
        """What `principal` may see (everything for the operator or None), by endpoint id."""
        return sorted(
            (r for r in self._registrations.values() if principal is None or _sees(principal, r)),
            key=lambda r: r.endpoint.sfe,
        )

    def endpoints(self, fqdns: Iterable[str] | None = None) -> list[Endpoint]:
        """Every registered endpoint (of these FQDNs), in endpoint id order."""
        wanted = None if fqdns is None else set(fqdns)
        return [
            r.endpoint for r in self.registrations() if wanted is None or r.endpoint.fqdn in wanted
        ]

    def fqdns(self) -> set[str]:
        return {r.endpoint.fqdn for r in self._registrations.values()}

    def delegations(self, principal: Principal | None = None) -> list[Delegation]:
        return [
            Delegation(name, tenant)
            for name, tenant in sorted(self._delegations.items())
            if principal is None or principal.role is Role.OPERATOR or principal.tenant == tenant
        ]

    def owner_of(self, fqdn: str) -> str | None:
        """The tenant owning `fqdn` by its most specific delegation; None: only the operator."""
        labels = fqdn.split(".")
        for i in range(len(labels)):
            tenant = self._delegations.get(".".join(labels[i:]))
            if tenant is not None:
                return tenant
        return None

    def may_manage(self, principal: Principal, fqdn: str) -> bool:
        """May `principal` register endpoints, set policies and read routes for `fqdn`?"""
        if principal.role is Role.OPERATOR:
            return True
        return principal.tenant is not None and self.owner_of(fqdn) == principal.tenant

    def require_fqdn(self, principal: Principal, fqdn: str, action: str = "register") -> None:
        """PermissionDenied naming the FQDN unless `principal` owns it (or is the operator)."""
        if not self.may_manage(principal, fqdn):
            # The same words whether another tenant owns the name or nobody does.
            raise PermissionDenied(
                f"tenant '{principal.tenant}' may not {action} '{fqdn}': the name is not "
                "delegated to it. Ask the operator to delegate it "
                f'(PUT /v1/delegations/{fqdn} with {{"tenant": "{principal.tenant}"}}).',
                fqdn=fqdn,
                tenant=principal.tenant,
            )

    # -- changing --------------------------------------------------------------------------

    def register(self, principal: Principal, endpoint: Endpoint) -> RegistryChange:
        """Add or replace the registration of `endpoint.sfe` (SFR-11).

        A tenant's endpoints always carry its tenant id; the operator registers for any tenant
        (the SFEMC connecting a tenant's endpoint) or for itself (tenant None). Registering the
        same endpoint again changes nothing and keeps the version.
        """
        endpoint = _check_endpoint(endpoint)
        if principal.role is Role.TENANT:
            if endpoint.tenant is not None and endpoint.tenant != principal.tenant:
                raise PermissionDenied(
                    f"tenant '{principal.tenant}' may not register endpoints for tenant "
                    f"'{endpoint.tenant}'; leave 'tenant' out or set it to '{principal.tenant}'",
                    fqdn=endpoint.fqdn,
                    tenant=principal.tenant,
                )
            endpoint = replace(endpoint, tenant=principal.tenant)
        elif endpoint.tenant is not None:
            validate_tenant_id(endpoint.tenant)
        self.require_fqdn(principal, endpoint.fqdn)
        before = self._registrations.get(endpoint.sfe)
        if before is not None:
            if before.origin is Origin.CONFIG:
                raise Conflict(
                    f"endpoint '{endpoint.sfe}' is configured in the topology file; change it "
                    "there, or register under another endpoint id",
                    sfe=endpoint.sfe,
                )
            if principal.role is Role.TENANT and before.owner != principal.tenant:
                raise Conflict(
                    f"endpoint id '{endpoint.sfe}' is taken; register under another id",
                    sfe=endpoint.sfe,
                )
        after = Registration(endpoint, Origin.API)
        change = RegistryChange(before, after)
        if change.changed:
            self._registrations[endpoint.sfe] = after
            self.version += 1
        return change

    def withdraw(self, principal: Principal, sfe: str) -> RegistryChange:
        """Remove an endpoint's registration (the SFEMC disconnecting it, SFR-11)."""
        before = self._registrations.get(sfe)
        if before is None or not _sees(principal, before):
            whose = f" of tenant '{principal.tenant}'" if principal.role is Role.TENANT else ""
            raise NotFound(f"no registered endpoint '{sfe}'{whose}", sfe=sfe)
        if before.origin is Origin.CONFIG:
            raise Conflict(
                f"endpoint '{sfe}' is configured in the topology file; remove it there and "
                "restart the PCE",
                sfe=sfe,
            )
        del self._registrations[sfe]
        self.version += 1
        return RegistryChange(before, None)

    def delegate(self, principal: Principal, name: str, tenant: str) -> Delegation:
        """Give `tenant` the name and everything under it (operator only, SFEMC-7)."""
        _require_operator(principal, "delegate names")
        name = normalise_fqdn(name, what="delegated name")
        validate_tenant_id(tenant)
        if self._delegations.get(name) != tenant:
            self._delegations[name] = tenant
            self.version += 1
        return Delegation(name, tenant)

    def undelegate(self, principal: Principal, name: str) -> Delegation:
        """Take a delegation back. The tenant's registrations stay until they are withdrawn:
        taking a name back must not cut a running service; new registrations are refused."""
        _require_operator(principal, "take delegations back")
        name = normalise_fqdn(name, what="delegated name")
        tenant = self._delegations.pop(name, None)
        if tenant is None:
            raise NotFound(f"'{name}' is not delegated", name=name)
        self.version += 1
        return Delegation(name, tenant)


def _sees(principal: Principal, registration: Registration) -> bool:
    return principal.role is Role.OPERATOR or registration.owner == principal.tenant


def _require_operator(principal: Principal, action: str) -> None:
    if principal.role is not Role.OPERATOR:
        raise PermissionDenied(
            f"only the operator may {action}; '{principal.name}' is a tenant principal",
            principal=principal.name,
        )
