"""The SFEMC as one object: what the orchestrator hands it and what it reports (ORCH-8/9, SFEMC-2..7).

`Sfemc.apply(tenant, model, template)` admits a chain (placement against capacity and areas; a
refusal changes nothing), records each endpoint's spec and desired state and queues the changed
ones; `remove(sfc)` asks every endpoint of a chain to go away; `handle_alert` turns a CLMC alert
into desired-state changes. The reconciler does the work in the background.

Desired states on re-submission: an endpoint whose initial state in the template did not change
keeps its current desired state (a fired policy may have moved it); one whose initial state
changed takes the new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from flame.common.errors import FlameError, UserError
from flame.sfemc.events import ALERT_TOPIC, AlertEvent, DecisionEvent, EventBus
from flame.sfemc.lifecycle import Lifecycle, LifecycleState
from flame.sfemc.placement import Demand, PlacementFailed, PlacementRequest, Placer
from flame.sfemc.reconciler import Reconciler
from flame.sfemc.registrar import Registrar
from flame.sfemc.store import ABSENT, EndpointRecord, ServiceRecord, SfemcStore, Transition
from flame.sfemc.triggers import PolicyTriggers, sfe_id
from flame.sfemc.vim.base import (
    EndpointSpec,
    HealthSpec,
    PortSpec,
    VimDriver,
    VimError,
    VimStatus,
    VimUnreachable,
)
from flame.topology.geo import Area
from flame.topology.model import Topology
from flame.tosca.model import EndpointState, ServiceFunction, ServiceModel

__all__ = [
    "DesiredEndpoint",
    "ImageResolver",
    "Sfemc",
    "VimUnavailable",
    "desired_endpoints",
    "spec_for",
]


class VimUnavailable(FlameError):
    """The VIM of an endpoint's cluster cannot be asked now (its agent is away): retry later."""

    code: ClassVar[str] = "vim_unavailable"
    http_status: ClassVar[int] = 503


class ImageResolver(Protocol):
    """The image repository as admission sees it (`flame.sfemc.images.ImageRepository`)."""

    def resolve(self, ref: str, tenant: str | None = None) -> str:
        """The digest of `ref` (a digest, name or name:tag) `tenant` may use; else a UserError."""
        ...


@dataclass(frozen=True, slots=True)
class DesiredEndpoint:
    spec: EndpointSpec
    initial: str  # the template's initial state ("unplaced" for policy-only endpoints)
    area: Area | None
    may_run: bool  # some policy may bring it above unplaced: capacity is held for it


def spec_for(tenant: str, model: ServiceModel, sf: ServiceFunction, cluster: str) -> EndpointSpec:
    ports = tuple(
        PortSpec(p.name or ("http" if i == 0 else f"port{i}"), p.port, p.protocol)
        for i, p in enumerate(sf.ports)
    )
    hc = sf.health_check
    return EndpointSpec(
        sfe=sfe_id(model.sfci, sf.name, cluster),
        tenant=tenant,
        sfc=model.sfc,
        sfci=model.sfci,
        sf=sf.name,
        cluster=cluster,
        fqdn=sf.fqdn,
        image=sf.image,
        ports=ports,
        environment=dict(sf.environment),
        health=None
        if hc is None
        else HealthSpec(hc.path, hc.port, hc.interval_s, hc.timeout_s, hc.retries),
        cpus=sf.resources.cpus,
        memory_bytes=sf.resources.memory_bytes,
        disk_bytes=sf.resources.disk_bytes,
    )


def desired_endpoints(tenant: str, model: ServiceModel) -> dict[str, DesiredEndpoint]:
    """Every endpoint the template mentions, in initial policies or state-change policies."""
    found: dict[str, DesiredEndpoint] = {}
    for policy in model.initial_policies:
        for t in policy.states:
            spec = spec_for(tenant, model, model.sf(t.sf), t.cluster)
            found[spec.sfe] = DesiredEndpoint(spec, t.state.value, policy.area, True)
    for change in model.state_change_policies:
        for t in change.changes:
            spec = spec_for(tenant, model, model.sf(t.sf), t.cluster)
            if spec.sfe not in found:
                runs = t.state is not EndpointState.UNPLACED
                found[spec.sfe] = DesiredEndpoint(spec, LifecycleState.UNPLACED.value, None, runs)
            elif t.state is not EndpointState.UNPLACED and not found[spec.sfe].may_run:
                old = found[spec.sfe]
                found[spec.sfe] = DesiredEndpoint(old.spec, old.initial, old.area, True)
    return found


def _demand(spec: EndpointSpec) -> Demand:
    return Demand(spec.cpus or 0.0, spec.memory_bytes or 0, spec.disk_bytes or 0)


def _initial_states(model: Mapping[str, Any]) -> dict[str, str]:
    """sfe -> initial state, from a stored `ServiceModel.to_dict()`."""
    sfci = str(model["sfci"])
    return {
        sfe_id(sfci, t["sf"], t["cluster"]): str(t["state"])
        for p in model.get("initial_policies", [])
        for t in p["states"]
    }


class Sfemc:
    def __init__(
        self,
        store: SfemcStore,
        bus: EventBus,
        topology: Topology,
        vims: Mapping[str, VimDriver],
        registrar: Registrar,
        *,
        drain_s: float = 1.0,
        resync_s: float = 30.0,
        workers: int = 8,
        images: ImageResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.images = images
        self.bus = bus
        self.topology = topology
        self.vims = vims
        self.registrar = registrar
        self.clock = clock
        self.placer = Placer(topology)
        self.lifecycle = Lifecycle(store, bus, clock)
        self.reconciler = Reconciler(
            store,
            self.lifecycle,
            vims,
            registrar,
            workers=workers,
            resync_s=resync_s,
            drain_s=drain_s,
            clock=clock,
        )
        self.triggers = PolicyTriggers(store, bus, self._policy_desired, clock)
        # Alerts may also arrive on the bus (the in-process CLMC) rather than the webhook.
        self._unsubscribe = bus.subscribe(ALERT_TOPIC, self._on_bus_alert)

    async def start(self) -> None:
        await self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()

    def _on_bus_alert(self, event: object) -> None:
        if isinstance(event, AlertEvent):
            self.handle_alert(event)

    # -- what the orchestrator asks -----------------------------------------------------------

    def service(self, sfc: str) -> ServiceRecord | None:
        return self.store.service(sfc)

    def services(self) -> list[ServiceRecord]:
        return self.store.services()

    def endpoints(self, sfc: str | None = None) -> list[EndpointRecord]:
        return self.store.endpoints(sfc)

    def history(self, *, sfe: str | None = None, sfc: str | None = None) -> list[Transition]:
        return self.store.history(sfe=sfe, sfc=sfc)

    def allocated(self, exclude_sfc: str | None = None) -> dict[str, Demand]:
        """Resources held per cluster by endpoints of other chains."""
        held: dict[str, Demand] = {}
        holding = self._holding()
        for record in self.store.endpoints():
            if record.sfc == exclude_sfc or record.sfe not in holding:
                continue
            held[record.cluster] = held.get(record.cluster, Demand()) + _demand(record.spec)
        return held

    def _holding(self) -> set[str]:
        """Endpoints that hold capacity: those a policy may run, and any still placed."""
        holding: set[str] = set()
        for service in self.store.services():
            for p in service.model.get("initial_policies", []):
                for t in p["states"]:
                    holding.add(sfe_id(service.sfci, t["sf"], t["cluster"]))
            for p in service.model.get("state_change_policies", []):
                for c in p["changes"]:
                    if c["state"] != LifecycleState.UNPLACED.value:
                        holding.add(sfe_id(service.sfci, c["sf"], c["cluster"]))
        for record in self.store.endpoints():
            if record.state is not LifecycleState.UNPLACED:
                holding.add(record.sfe)
        return holding

    def image_problems(
        self, model: ServiceModel, tenant: str | None = None
    ) -> list[tuple[str, str]]:
        """(sf, why) for each process SF whose image the repository does not hold."""
        if self.images is None:
            return []
        problems = []
        for sf in model.service_functions:
            if sf.runtime != "process":
                continue  # container images live in a registry the platform does not own
            try:
                self.images.resolve(sf.image, tenant)
            except UserError as exc:
                problems.append((sf.name, exc.message))
        return problems

    def cluster_problems(self, model: ServiceModel) -> list[tuple[str, str]]:
        """(sf, cluster) pairs placed on a cluster this SFEMC has no VIM for."""
        wanted = desired_endpoints("-", model)
        return sorted(
            {
                (d.spec.sf, d.spec.cluster)
                for d in wanted.values()
                if d.spec.cluster not in self.vims
            }
        )

    def admit(self, tenant: str, model: ServiceModel) -> dict[str, DesiredEndpoint]:
        """The endpoints of `model`; PlacementFailed (changing nothing) if they do not fit."""
        wanted = desired_endpoints(tenant, model)
        requests = [
            PlacementRequest(d.spec.sf, d.spec.cluster, _demand(d.spec), d.area, d.spec.sfe)
            for d in wanted.values()
            if d.may_run or d.initial != LifecycleState.UNPLACED.value
        ]
        problems = self.placer.check(requests, self.allocated(exclude_sfc=model.sfc))
        if problems:
            raise PlacementFailed(model.sfc, problems)
        return wanted

    def apply(self, tenant: str, model: ServiceModel, template: Mapping[str, str]) -> list[str]:
        """Record the chain and its endpoints; returns the endpoints that changed."""
        wanted = self.admit(tenant, model)
        old = self.store.service(model.sfc)
        if old is not None and old.tenant != tenant:
            raise UserError(f"service function chain '{model.sfc}' belongs to another tenant")
        old_initial = _initial_states(old.model) if old is not None else {}
        current = {r.sfe: r for r in self.store.endpoints(model.sfc)}
        now = self.clock()
        self.store.put_service(
            ServiceRecord(
                sfc=model.sfc,
                tenant=tenant,
                sfci=model.sfci,
                model=model.to_dict(),
                template=dict(template),
                generation=(old.generation + 1) if old is not None else 1,
                updated=now,
            )
        )
        changed: list[str] = []
        for sfe, want in wanted.items():
            record = current.get(sfe)
            desired = want.initial
            if (
                record is not None
                and record.desired != ABSENT
                and old_initial.get(sfe, LifecycleState.UNPLACED.value) == want.initial
            ):
                desired = record.desired  # unchanged in the template: keep what policies chose
            if record is None or record.spec != want.spec or record.desired != desired:
                self.store.upsert_endpoint(want.spec, desired, now)
                changed.append(sfe)
        for sfe, record in current.items():
            if sfe not in wanted and record.desired != ABSENT:
                self.store.set_desired(sfe, ABSENT)
                changed.append(sfe)
        for sfe in changed:
            self.reconciler.enqueue(sfe)
        return sorted(changed)

    def remove(self, sfc: str) -> list[str]:
        """Every endpoint of the chain goes (unplaced, then forgotten); the chain is forgotten."""
        gone = []
        for record in self.store.endpoints(sfc):
            if record.desired != ABSENT:
                self.store.set_desired(record.sfe, ABSENT)
            gone.append(record.sfe)
            self.reconciler.enqueue(record.sfe)
        self.store.delete_service(sfc)
        self.store.clear_policy_clocks(sfc)
        return gone

    async def runtime(self, sfes: list[str], timeout_s: float = 2.0) -> dict[str, VimStatus]:
        """What the VIMs say of these endpoints now (restarts, last crash); an endpoint whose
        VIM does not answer in time is left out rather than holding up a status request."""

        async def one(sfe: str) -> tuple[str, VimStatus | None]:
            record = self.store.endpoint(sfe)
            vim = self.vims.get(record.cluster) if record is not None else None
            if vim is None:
                return sfe, None
            try:
                return sfe, await asyncio.wait_for(vim.status(sfe), timeout_s)
            except (TimeoutError, VimError, OSError):
                return sfe, None

        found = await asyncio.gather(*(one(sfe) for sfe in sfes))
        return {sfe: status for sfe, status in found if status is not None}

    async def logs(self, sfe: str, tail: int = 100) -> list[str]:
        record = self.store.endpoint(sfe)
        if record is None:
            raise UserError(f"no endpoint '{sfe}'", sfe=sfe)
        vim = self.vims.get(record.cluster)
        if vim is None:
            return []
        try:
            return await vim.logs(sfe, tail)
        except VimUnreachable as exc:  # a cluster agent away: say so (503), not a crash (500)
            raise VimUnavailable(exc.reason, sfe=sfe, cluster=record.cluster) from None

    # -- policy triggers (SFEMC-3/4) ------------------------------------------------------------

    def handle_alert(self, event: AlertEvent) -> DecisionEvent:
        return self.triggers.handle(event)

    def _policy_desired(self, sfe: str, state: str) -> None:
        if self.store.set_desired(sfe, state):
            self.reconciler.enqueue(sfe)
