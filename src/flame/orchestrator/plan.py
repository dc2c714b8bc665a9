"""Plans: a submitted service against what is deployed (ORCH-2, ORCH-7).

A plan lists the endpoints to add, change (with what changes) and remove, and the consistency
errors that forbid applying it: the chain name or an FQDN belonging to another tenant, a
different instance of an already deployed chain, an FQDN not delegated to the tenant, or
endpoints that cannot be placed. Applying a plan with errors is refused and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flame.sfemc.control import DesiredEndpoint, Sfemc, desired_endpoints
from flame.sfemc.placement import PlacementFailed
from flame.sfemc.store import ABSENT, EndpointRecord
from flame.tosca.model import ServiceModel

__all__ = ["ConsistencyProblem", "EndpointDiff", "Plan", "make_plan"]

_SPEC_FIELDS = (
    "image",
    "fqdn",
    "ports",
    "environment",
    "health",
    "cpus",
    "memory_bytes",
    "disk_bytes",
)


@dataclass(frozen=True, slots=True)
class ConsistencyProblem:
    # sfc_taken | instance_mismatch | fqdn_taken | fqdn_not_delegated | unknown_image |
    # unreachable_cluster | placement
    code: str
    message: str
    sf: str | None = None
    cluster: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "sf": self.sf, "cluster": self.cluster}


@dataclass(frozen=True, slots=True)
class EndpointDiff:
    sfe: str
    sf: str
    cluster: str
    action: str  # add | change | remove | unchanged
    desired: str
    changes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sfe": self.sfe,
            "sf": self.sf,
            "cluster": self.cluster,
            "action": self.action,
            "desired": self.desired,
            "changes": list(self.changes),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    sfc: str
    sfci: str
    tenant: str
    generation: int  # of the deployed chain; 0 if new
    endpoints: tuple[EndpointDiff, ...] = ()
    errors: tuple[ConsistencyProblem, ...] = ()
    policies: dict[str, list[str]] = field(default_factory=dict)  # added/removed/kept names

    @property
    def ok(self) -> bool:
        return not self.errors

    def of(self, action: str) -> list[EndpointDiff]:
        return [e for e in self.endpoints if e.action == action]

    @property
    def empty(self) -> bool:
        return all(e.action == "unchanged" for e in self.endpoints)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sfc": self.sfc,
            "sfci": self.sfci,
            "tenant": self.tenant,
            "generation": self.generation,
            "ok": self.ok,
            "add": [e.to_dict() for e in self.of("add")],
            "change": [e.to_dict() for e in self.of("change")],
            "remove": [e.to_dict() for e in self.of("remove")],
            "unchanged": [e.sfe for e in self.of("unchanged")],
            "policies": self.policies,
            "errors": [p.to_dict() for p in self.errors],
        }


def _diff(want: DesiredEndpoint, have: EndpointRecord, old_initial: str | None) -> tuple[str, ...]:
    changes = [
        f for f in _SPEC_FIELDS if _norm(getattr(want.spec, f)) != _norm(getattr(have.spec, f))
    ]
    if have.desired == ABSENT:
        changes.append("being removed: deploy again")
    elif old_initial != want.initial:
        changes.append(f"initial state {old_initial or 'unplaced'} -> {want.initial}")
    return tuple(changes)


def _norm(value: Any) -> Any:
    return dict(value) if hasattr(value, "items") else value


async def make_plan(sfemc: Sfemc, tenant: str, model: ServiceModel) -> Plan:
    errors: list[ConsistencyProblem] = []
    deployed = sfemc.service(model.sfc)
    current = {r.sfe: r for r in sfemc.endpoints(model.sfc)}
    owner = (
        deployed.tenant
        if deployed is not None
        else next((r.tenant for r in current.values()), None)
    )
    if owner is not None and owner != tenant:
        errors.append(
            ConsistencyProblem(
                "sfc_taken",
                f"the service function chain name '{model.sfc}' is taken; choose another "
                "'servicefunctionchain' in the template's metadata",
            )
        )
        return Plan(model.sfc, model.sfci, tenant, 0, (), tuple(errors))
    if deployed is not None and deployed.sfci != model.sfci:
        errors.append(
            ConsistencyProblem(
                "instance_mismatch",
                f"chain '{model.sfc}' is deployed as instance '{deployed.sfci}' but the template "
                f"says '{model.sfci}': keep 'sfc_instance: {deployed.sfci}' to change it in "
                f"place, or undeploy '{model.sfc}' first",
            )
        )
    errors.extend(await _fqdn_problems(sfemc, tenant, model))
    for sf, why in sfemc.image_problems(model, tenant):
        errors.append(
            ConsistencyProblem(
                "unknown_image",
                f"SF '{sf}': {why}; package it first ('flame package DIR --tag ...')",
                sf,
            )
        )
    for sf, cluster in sfemc.cluster_problems(model):
        errors.append(
            ConsistencyProblem(
                "unreachable_cluster",
                f"SF '{sf}' on cluster '{cluster}': this SFEMC has no VIM for the cluster "
                f"(it manages {', '.join(sorted(sfemc.vims)) or 'none'}); pick another cluster",
                sf,
                cluster,
            )
        )
    try:
        wanted = sfemc.admit(tenant, model)
    except PlacementFailed as exc:
        wanted = desired_endpoints(tenant, model)
        errors.extend(
            ConsistencyProblem(
                "placement", f"cannot place {p.sf} on {p.cluster}: {p.reason}", p.sf, p.cluster
            )
            for p in exc.problems
        )
    old_initial: dict[str, str] = {}
    if deployed is not None:
        for p in deployed.model.get("initial_policies", []):
            for t in p["states"]:
                old_initial[f"{deployed.sfci}.{t['sf']}.{t['cluster']}"] = str(t["state"])
    diffs: list[EndpointDiff] = []
    for sfe, want in sorted(wanted.items()):
        have = current.get(sfe)
        if have is None:
            diffs.append(EndpointDiff(sfe, want.spec.sf, want.spec.cluster, "add", want.initial))
            continue
        changes = _diff(want, have, old_initial.get(sfe, "unplaced" if deployed else None))
        action = "change" if changes else "unchanged"
        desired = want.initial if changes else have.desired
        diffs.append(EndpointDiff(sfe, want.spec.sf, want.spec.cluster, action, desired, changes))
    for sfe, have in sorted(current.items()):
        if sfe not in wanted and have.desired != ABSENT:
            diffs.append(EndpointDiff(sfe, have.sf, have.cluster, "remove", ABSENT))
    before = {
        f"{p['name']}/{p['trigger']}"
        for p in (deployed.model if deployed else {}).get("state_change_policies", [])
    }
    after = {f"{p.name}/{p.trigger}" for p in model.state_change_policies}
    policies = {
        "add": sorted(after - before),
        "remove": sorted(before - after),
        "keep": sorted(after & before),
    }
    generation = deployed.generation if deployed is not None else 0
    return Plan(model.sfc, model.sfci, tenant, generation, tuple(diffs), tuple(errors), policies)


async def _fqdn_problems(
    sfemc: Sfemc, tenant: str, model: ServiceModel
) -> list[ConsistencyProblem]:
    """SFEMC-7: an FQDN used by another tenant's chain, or delegated to another tenant."""
    problems: list[ConsistencyProblem] = []
    others: dict[str, str] = {}
    for service in sfemc.services():
        if service.tenant != tenant:
            for sf in service.model.get("service_functions", []):
                others[str(sf["fqdn"])] = service.sfc
    for sf in model.service_functions:
        if sf.fqdn in others:
            problems.append(
                ConsistencyProblem(
                    "fqdn_taken",
                    f"SF '{sf.name}': FQDN '{sf.fqdn}' is served by another tenant's chain; "
                    "use a name delegated to you",
                    sf.name,
                )
            )
            continue
        owner = await sfemc.registrar.owner(sf.fqdn)
        if owner != tenant:
            why = (
                "delegated to another tenant"
                if owner is not None
                else "not delegated to any tenant"
            )
            problems.append(
                ConsistencyProblem(
                    "fqdn_not_delegated",
                    f"SF '{sf.name}': FQDN '{sf.fqdn}' is {why}; only chains of the tenant owning "
                    f"a name may register it (SFEMC-7). Ask the operator to delegate it to "
                    f"'{tenant}' (PUT /v1/delegations/{sf.fqdn} on the PCE)",
                    sf.name,
                )
            )
    return problems
