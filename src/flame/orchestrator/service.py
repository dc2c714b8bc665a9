"""The orchestrator: validate, plan, apply, report and delete services for tenants (ORCH-1/2/6-9).

Tenancy: a tenant sees and changes only its own chains; an unknown chain and another tenant's
look the same (404). The operator acts for a tenant by naming it (`tenant=`).

Exceptions (all `UserError`, so HTTP 4xx and CLI exit 1)::

    ValidationFailed   422  the template is invalid; every diagnostic located (file:line:col)
    PlanRejected       409  the template contradicts what is deployed; nothing changed
    ServiceNotFound    404  no such chain (or not the caller's)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar, Literal

import anyio

from flame.common.auth import (
    Principal,
    Role,
    can_access_service,
    require_operator,
    validate_tenant_id,
)
from flame.common.diagnostics import Diagnostic, Position, ValidationFailed
from flame.common.errors import FlameError, UserError
from flame.orchestrator.alerts import AlertSink
from flame.orchestrator.config_record import ConfigRecorder
from flame.orchestrator.plan import Plan, make_plan
from flame.sfemc.control import Sfemc
from flame.sfemc.store import EndpointRecord
from flame.topology.model import Topology
from flame.tosca import validate_texts
from flame.tosca.model import ServiceModel

log = logging.getLogger(__name__)

__all__ = ["Orchestrator", "PlanRejected", "ServiceNotFound"]


class ServiceNotFound(UserError):
    code: ClassVar[str] = "not_found"
    http_status: ClassVar[int] = 404


class PlanRejected(UserError):
    code: ClassVar[str] = "plan_rejected"
    http_status: ClassVar[int] = 409

    def __init__(self, plan: Plan) -> None:
        first = plan.errors[0].message
        more = f" (and {len(plan.errors) - 1} more)" if len(plan.errors) > 1 else ""
        super().__init__(
            f"service '{plan.sfc}' not applied, nothing changed: {first}{more}",
            sfc=plan.sfc,
            errors=[e.to_dict() for e in plan.errors],
            plan=plan.to_dict(),
        )
        self.plan = plan


class ValidationBusy(FlameError):
    """Too many templates are waiting for validation; the client should retry shortly."""

    code: ClassVar[str] = "busy"
    http_status: ClassVar[int] = 503


# Templates are validated one at a time off the event loop; this many may wait their turn.
MAX_WAITING_VALIDATIONS = 8
# Templates larger than this are validated in a separate process (the GIL would otherwise
# let the YAML parser starve the event loop for seconds); smaller ones in a thread.
PROCESS_ABOVE_CHARS = 256 * 1024

# What a validation sends back: the model, a user error's message, or the diagnostics.
_Outcome = (
    tuple[Literal["model"], ServiceModel]
    | tuple[Literal["user"], str]
    | tuple[Literal["diagnostics"], list[Diagnostic]]
)


def _validate(
    files: dict[str, str], topology: Topology, runtimes: frozenset[str] | None
) -> _Outcome:
    """Validate in this process or a worker process; only plain data crosses back."""
    if not files:
        return ("user", "no template given: send {'template': '<yaml>'} or a multipart file")
    kwargs: dict[str, Any] = {"topology": topology}
    if runtimes is not None:
        kwargs["runtimes"] = runtimes
    result = validate_texts(files, **kwargs)
    if result.model is not None:
        return ("model", result.model)
    diagnostics = list(result.diagnostics)
    if result.ok:
        diagnostics.append(
            Diagnostic(
                "E001",
                "not a FLAME service: no eu.ict-flame.nodes.ServiceFunction and no servicefunctionchain",
                Position(next(iter(files)), 1, 1),
                hint="see docs/tosca.md for the FLAME profile",
            )
        )
    return ("diagnostics", diagnostics)


def _model_or_raise(outcome: _Outcome) -> ServiceModel:
    if outcome[0] == "model":
        return outcome[1]
    if outcome[0] == "user":
        raise UserError(outcome[1])
    raise ValidationFailed(outcome[1])


class Orchestrator:
    def __init__(
        self,
        sfemc: Sfemc,
        alerts: AlertSink,
        *,
        runtimes: Collection[str] | None = None,
        config: ConfigRecorder | None = None,
    ) -> None:
        """`config` records what is put in force in the CLMC's configuration store (CLMC-3)."""
        self.sfemc = sfemc
        self.alerts = alerts
        self.config = config
        self.runtimes = runtimes
        self._validating = asyncio.Semaphore(1)
        self._waiting = 0
        self._pool: ProcessPoolExecutor | None = None

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def tenant_of(principal: Principal, tenant: str | None = None) -> str:
        if principal.role is Role.TENANT:
            assert principal.tenant is not None
            if tenant is not None and tenant != principal.tenant:
                raise UserError(
                    f"tenant '{principal.tenant}' cannot act for tenant '{tenant}'; leave 'tenant' out"
                )
            return principal.tenant
        require_operator(principal)  # a router (or any other role) acts for no tenant
        if tenant is None:
            raise UserError(
                "the operator must say which tenant a service belongs to: add ?tenant=NAME "
                "(flame deploy --tenant NAME)"
            )
        return validate_tenant_id(tenant)

    async def validated(self, files: Mapping[str, str]) -> ServiceModel:
        """The template's model, validated off the event loop one template at a time: a large
        template (seconds of work, much of it in the YAML parser, which holds the GIL) must not
        stall the API's event loop, its health check and the SFEMC's webhook, so it goes to a
        separate process; a small one to a thread. A flood is refused with 503, not queued."""
        if self._waiting >= MAX_WAITING_VALIDATIONS:
            raise ValidationBusy(
                f"{self._waiting} templates are waiting for validation; retry in a few seconds"
            )
        self._waiting += 1
        try:
            async with self._validating:
                if sum(len(text) for text in files.values()) <= PROCESS_ABOVE_CHARS:
                    return await anyio.to_thread.run_sync(self.model_of, files)
                if self._pool is None:
                    context = multiprocessing.get_context("forkserver")
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
                loop = asyncio.get_running_loop()
                try:
                    outcome = await loop.run_in_executor(
                        self._pool, _validate, dict(files), self.sfemc.topology, self._runtimes()
                    )
                except BrokenProcessPool:
                    # The worker could not start or died (e.g. out of memory): validate here,
                    # slower for the loop but correct, and try a fresh worker next time.
                    log.warning("the validation process failed; validating in a thread")
                    self.close()
                    return await anyio.to_thread.run_sync(self.model_of, files)
                return _model_or_raise(outcome)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Stop the validation process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _runtimes(self) -> frozenset[str] | None:
        return None if self.runtimes is None else frozenset(self.runtimes)

    def model_of(self, files: Mapping[str, str]) -> ServiceModel:
        return _model_or_raise(_validate(dict(files), self.sfemc.topology, self._runtimes()))

    def _visible(self, principal: Principal, sfc: str) -> tuple[str, list[EndpointRecord]]:
        """The chain's tenant and endpoints; ServiceNotFound if unknown or not the caller's."""
        deployed = self.sfemc.service(sfc)
        endpoints = self.sfemc.endpoints(sfc)
        owner = deployed.tenant if deployed else (endpoints[0].tenant if endpoints else None)
        if owner is None or not can_access_service(principal, owner):
            whose = f" of tenant '{principal.tenant}'" if principal.role is Role.TENANT else ""
            raise ServiceNotFound(f"no service function chain '{sfc}'{whose}", sfc=sfc)
        return owner, endpoints

    # -- operations ---------------------------------------------------------------------------

    async def plan(
        self,
        principal: Principal,
        files: Mapping[str, str],
        *,
        tenant: str | None = None,
        sfc: str | None = None,
    ) -> Plan:
        owner = self.tenant_of(principal, tenant)
        model = await self.validated(files)
        if sfc is not None and model.sfc != sfc:
            raise UserError(
                f"the template declares chain '{model.sfc}' but the request is for '{sfc}'; "
                f"use POST /v1/services/{model.sfc}/plan",
                sfc=sfc,
            )
        return await make_plan(self.sfemc, owner, model)

    async def apply(
        self, principal: Principal, files: Mapping[str, str], *, tenant: str | None = None
    ) -> tuple[Plan, list[str]]:
        owner = self.tenant_of(principal, tenant)
        model = await self.validated(files)
        plan = await make_plan(self.sfemc, owner, model)
        if not plan.ok:
            raise PlanRejected(plan)
        # ORCH-8: alerts to the CLMC first, so that rules it refuses (a webhook its outbound
        # policy forbids) fail the deployment before anything changes. Off the event loop: the
        # CLMC checks the webhooks' addresses, which may take a DNS lookup.
        await anyio.to_thread.run_sync(
            self.alerts.set_rules, model.sfc, owner, model.alert_rules, model.sfci
        )
        changed = self.sfemc.apply(owner, model, files)  # ORCH-9: endpoint states and policies
        if self.config is not None:  # CLMC-3: in force from now on (spooled on disk, sent soon)
            await anyio.to_thread.run_sync(self.config.template, model, owner, files)
        return plan, changed

    def services(self, principal: Principal) -> list[dict[str, Any]]:
        out = []
        for service in self.sfemc.services():
            if not can_access_service(principal, service.tenant):
                continue
            out.append(
                self._summary(service.sfc, service.tenant, self.sfemc.endpoints(service.sfc))
            )
        return out

    async def status(
        self, principal: Principal, sfc: str, *, history: bool = True
    ) -> dict[str, Any]:
        owner, endpoints = self._visible(principal, sfc)
        summary = self._summary(sfc, owner, endpoints)
        # What the VIM knows and the store does not: crashes it restarted the process after.
        runtime = await self.sfemc.runtime([e.sfe for e in endpoints])
        for ep in summary["endpoints"]:
            vim = runtime.get(ep["sfe"])
            ep["restarts"] = vim.restarts if vim is not None else None
            ep["last_crash"] = vim.reason if vim is not None and vim.restarts else None
        if history:
            by_sfe: dict[str, list[dict[str, Any]]] = {}
            for t in self.sfemc.history(sfc=sfc):
                by_sfe.setdefault(t.event.sfe, []).append(
                    {
                        "from": t.event.from_state,
                        "to": t.event.to_state,
                        "time": t.event.time,
                        "duration_s": t.event.duration_s,
                        "reason": t.event.reason,
                    }
                )
            for ep in summary["endpoints"]:
                ep["history"] = by_sfe.get(ep["sfe"], [])
        return summary

    def _summary(self, sfc: str, tenant: str, endpoints: list[EndpointRecord]) -> dict[str, Any]:
        deployed = self.sfemc.service(sfc)
        settled = all(
            e.state.value == (e.desired if e.desired != "absent" else "unplaced") for e in endpoints
        )
        return {
            "sfc": sfc,
            "sfci": deployed.sfci if deployed else (endpoints[0].sfci if endpoints else None),
            "tenant": tenant,
            "generation": deployed.generation if deployed else None,
            "deleting": deployed is None,
            "settled": settled,
            "failed": [e.sfe for e in endpoints if e.state.value == "failed"],
            "endpoints": [e.to_dict() for e in endpoints],
        }

    def delete(self, principal: Principal, sfc: str) -> list[str]:
        owner, _ = self._visible(principal, sfc)
        self.alerts.remove_rules(sfc)
        removing = self.sfemc.remove(sfc)
        if self.config is not None:
            self.config.deleted(sfc, owner)
        return removing

    async def logs(self, principal: Principal, sfe: str, tail: int = 100) -> list[str]:
        record = self.sfemc.store.endpoint(sfe)
        if record is None or not can_access_service(principal, record.tenant):
            raise ServiceNotFound(f"no endpoint '{sfe}'", sfe=sfe)
        return await self.sfemc.logs(sfe, tail)
