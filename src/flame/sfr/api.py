"""The PCE's HTTP API (FastAPI): topology, registrations, delegations, policies, tables, routes.

`create_app(service, tokens)` builds it; `flame serve pce` runs it under uvicorn. Every route
under `/v1` needs `Authorization: Bearer <token>` (checked by a middleware before anything else,
so an anonymous request learns nothing, not even whether its body was valid): each route declares
who may call it (`flame.common.access`): operators may do everything; tenants may read the
topology, their registrations and delegations, and manage the policies and read the routes of
the names delegated to them (SFR-10, SFR-11); routers read forwarding tables and report what
their link liveness probes see (`POST /v1/topology/links/{a}/{b}/liveness`, issue 13: a link
so reported down is marked `detected` in `GET /v1/topology`; a probe never undoes an
operator's link-down), and nothing else.
Only the operator registers endpoints (the SFEMC does, SFEMC-7): a tenant could otherwise point
its FQDN at any host:port, the platform's own services included. `GET /health` is open.

Errors are always JSON, `{"error": <code>, "message": <text>, ...context}`, from
`FlameError.as_dict()`: 400 bad request, 401 (with `WWW-Authenticate`), 403, 404, 409, 422 for
a body or query that does not fit the schema, 503 (with `Retry-After`) from a standby PCE, and
500 without a traceback for our own bugs.

Distribution (SFR-11): each SR long-polls `GET /v1/tables/{sr}?since=V&wait=S` and gets the
table as soon as its version exceeds V, or 304 after S seconds (at most 60). Responses carry
`X-Flame-Table-Version` and `X-Flame-Pce-Generation`; the generation changes only if the PCE
database is replaced, the one case where versions restart.

Content certificates (SFR-22, SFR-23): a tenant uploads a chain and key for an FQDN delegated
to it (`PUT /v1/certs/{fqdn}`), reads back the chain and metadata (never the key), sets the
plain-HTTP redirect, deletes its upload or renews the platform's certificate. Each SR
long-polls `GET /v1/certs/sr/{sr}?since=V&wait=S` with its router token for the certificates
*and keys* of the FQDNs its table routes (`X-Flame-Cert-Version`, `X-Flame-Cert-Generation`).

All handlers are `async`: the service's state lives on the event loop's thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from flame import __version__
from flame.common.access import (
    PUBLIC,
    AnyRole,
    OperatorOnly,
    RouterOrOperator,
    TenantOrOperator,
    require_declared,
)
from flame.common.auth import TokenStore
from flame.common.errors import UserError
from flame.common.http_api import BearerAuth, install_errors
from flame.sfr.models import Endpoint, Metric, RoutingPolicy
from flame.sfr.registry import normalise_fqdn
from flame.sfr.service import MAX_WAIT_S, ChangeResult, PceService, PublishedTable
from flame.sfr.store import encode_link, encode_node
from flame.topology.geo import GeoPoint
from flame.topology.model import Link, Node, NodeKind, Resources, Topology, Vim
from flame.topology.model import LinkState as LinkUpDown

__all__ = ["create_app"]

log = logging.getLogger("flame.sfr.api")

_NODE_ID = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


# -- request bodies (422 when they do not fit) ---------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EndpointBody(_Body):
    sfe: str = Field(min_length=1, max_length=253)
    fqdn: str = Field(min_length=1, max_length=253)
    cluster: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    sfc: str | None = None
    tenant: str | None = None
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    tls: bool = False  # serves TLS with a platform certificate (hop-by-hop TLS)


class EndpointCertBody(_Body):
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    days: float | None = Field(default=None, gt=0, le=90, allow_inf_nan=False)


class LinkPatch(_Body):
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class LivenessBody(_Body):
    """A link's state as its liveness probes see it (flame.sfr.liveness)."""

    up: bool
    reporter: str = Field(min_length=1, max_length=253)


class PointBody(_Body):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class ResourcesBody(_Body):
    cpus: float = Field(gt=0, allow_inf_nan=False)
    memory_bytes: int = Field(gt=0)
    disk_bytes: int = Field(gt=0)


class NewLinkBody(_Body):
    to: str = Field(min_length=1)
    latency_ms: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    bandwidth_bps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    link_class: str | None = Field(default=None, alias="class")
    state: LinkUpDown = LinkUpDown.UP


class NodeBody(_Body):
    id: str = Field(pattern=_NODE_ID)
    kind: NodeKind
    location: PointBody | str | None = None  # coordinates, or a named location of the topology
    sr: str | None = None
    address: str | None = None
    capacity: ResourcesBody | None = None
    vim: Vim | None = None
    links: list[NewLinkBody] = Field(default_factory=list)


class DelegationBody(_Body):
    tenant: str = Field(min_length=1)


class AreaBody(_Body):
    centre: PointBody | None = None
    radius_km: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    polygon: list[PointBody] = Field(default_factory=list)
    location: str | None = None


class CertBody(_Body):
    chain: str = Field(min_length=1, max_length=64 * 1024, description="PEM, leaf first")
    key: str = Field(min_length=1, max_length=16 * 1024, repr=False, description="PEM")
    redirect_http: bool | None = None


class CertOptionsBody(_Body):
    redirect_http: bool


class PolicyBody(_Body):
    metric: Metric = Metric.LATENCY
    area: AreaBody | None = None
    paths_in_area: bool = False
    prefer_clusters: list[str] = Field(default_factory=list)
    avoid_clusters: list[str] = Field(default_factory=list)
    exclude_clusters: list[str] = Field(default_factory=list)
    prefer_locations: list[str] = Field(default_factory=list)
    avoid_locations: list[str] = Field(default_factory=list)
    exclude_link_classes: list[str] = Field(default_factory=list)
    max_latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)


# -- the app ---------------------------------------------------------------------------------------


def create_app(service: PceService, tokens: TokenStore) -> FastAPI:
    """The PCE API around `service`; the app's lifespan starts and stops the service."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="FLAME PCE",
        version=__version__,
        description="Path computation, FQDN registry and forwarding tables (SFR).",
        lifespan=lifespan,
    )
    app.add_middleware(BearerAuth, tokens=tokens)
    install_errors(app, "the PCE")

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        """Liveness and role (active or standby); no token needed."""
        return service.status()

    _install_topology_routes(app, service)
    _install_registry_routes(app, service)
    _install_policy_routes(app, service)
    _install_table_routes(app, service)
    _install_cert_routes(app, service)
    return require_declared(app)


def _install_topology_routes(app: FastAPI, service: PceService) -> None:
    """Routes: topology (SFR-7, SFR-13)."""

    # Links down because their liveness probes said so, not the operator (this PCE's memory
    # only): `flame up --netns` takes the operator's down links down for real, not these.
    detected: set[frozenset[str]] = set()

    @app.get("/v1/topology")
    async def get_topology(caller: TenantOrOperator) -> dict[str, Any]:
        return _topology_dict(service.topology(), detected)

    @app.post("/v1/topology/links/{a}/{b}/down")
    async def link_down(a: str, b: str, caller: OperatorOnly) -> dict[str, Any]:
        result = service.set_link_state(a, b, up=False)
        detected.discard(frozenset((a, b)))
        return result.to_dict()

    @app.post("/v1/topology/links/{a}/{b}/up")
    async def link_up(a: str, b: str, caller: OperatorOnly) -> dict[str, Any]:
        result = service.set_link_state(a, b, up=True)
        detected.discard(frozenset((a, b)))
        return result.to_dict()

    @app.post("/v1/topology/links/{a}/{b}/liveness")
    async def link_liveness(
        a: str, b: str, body: LivenessBody, caller: RouterOrOperator
    ) -> dict[str, Any]:
        """A liveness probe at one end of the link saw it die or come back (issue 13)."""
        if body.reporter not in (a, b):
            raise UserError(
                f"a link's state is reported by one of its ends ({a}, {b}), not {body.reporter}",
                link=[a, b],
            )
        pair = frozenset((a, b))
        if body.up and service_link_down(a, b) and pair not in detected:
            # The operator took it down: probes across it (a link still alive) change nothing.
            return {"changed": False, "operator_down": True}
        result = service.set_link_state(a, b, up=body.up)
        if body.up:
            detected.discard(pair)
        elif result.changed:
            detected.add(pair)
        return result.to_dict()

    def service_link_down(a: str, b: str) -> bool:
        return any(
            {k.a, k.b} == {a, b} and k.state is LinkUpDown.DOWN for k in service.topology().links
        )

    @app.put("/v1/topology/links/{a}/{b}")
    async def update_link(a: str, b: str, body: LinkPatch, caller: OperatorOnly) -> dict[str, Any]:
        result = service.update_link(
            a,
            b,
            latency_ms=body.latency_ms,
            cost=body.cost,
            set_cost="cost" in body.model_fields_set,
        )
        return result.to_dict()

    @app.post("/v1/topology/nodes", status_code=201)
    async def add_node(body: NodeBody, caller: OperatorOnly) -> dict[str, Any]:
        node, links = _node_from(body, service.topology())
        result: ChangeResult = service.add_node(node, links)
        return {"node": encode_node(node), **result.to_dict()}

    @app.delete("/v1/topology/nodes/{node_id}")
    async def remove_node(node_id: str, caller: OperatorOnly) -> dict[str, Any]:
        return {"node": node_id, **service.remove_node(node_id).to_dict()}


def _install_registry_routes(app: FastAPI, service: PceService) -> None:
    """Routes: registrations and delegations (SFR-10, SFR-11, SFEMC-7)."""

    @app.get("/v1/registrations")
    async def list_registrations(caller: TenantOrOperator) -> dict[str, Any]:
        return {
            "registry_version": service.registry_version,
            "registrations": [r.to_dict() for r in service.registrations(caller)],
        }

    @app.post("/v1/registrations")
    async def register(body: EndpointBody, caller: OperatorOnly) -> JSONResponse:
        change = service.register(caller, Endpoint(**body.model_dump()))
        assert change.after is not None
        return JSONResponse(
            {
                "registration": change.after.to_dict(),
                "changed": change.changed,
                "registry_version": service.registry_version,
            },
            status_code=201 if change.before is None else 200,
        )

    @app.delete("/v1/registrations/{sfe}")
    async def withdraw(sfe: str, caller: OperatorOnly) -> dict[str, Any]:
        change = service.withdraw(caller, sfe)
        assert change.before is not None
        return {"withdrawn": change.before.to_dict(), "registry_version": service.registry_version}

    @app.get("/v1/delegations")
    async def list_delegations(caller: TenantOrOperator) -> dict[str, Any]:
        return {"delegations": [d.to_dict() for d in service.delegations(caller)]}

    @app.put("/v1/delegations/{name}")
    async def delegate(name: str, body: DelegationBody, caller: OperatorOnly) -> dict[str, Any]:
        return service.delegate(caller, name, body.tenant).to_dict()

    @app.delete("/v1/delegations/{name}")
    async def undelegate(name: str, caller: OperatorOnly) -> dict[str, Any]:
        return service.undelegate(caller, name).to_dict()


def _install_policy_routes(app: FastAPI, service: PceService) -> None:
    """Routes: policies (SFR-5, SFR-6)."""

    @app.get("/v1/policies")
    async def list_policies(caller: TenantOrOperator) -> dict[str, Any]:
        return {"policies": [p.to_dict() for p in service.policies(caller)]}

    @app.get("/v1/policies/{fqdn}")
    async def get_policy(fqdn: str, caller: TenantOrOperator) -> dict[str, Any]:
        return service.policy(caller, fqdn).to_dict()

    @app.put("/v1/policies/{fqdn}")
    async def put_policy(fqdn: str, body: PolicyBody, caller: TenantOrOperator) -> dict[str, Any]:
        policy = RoutingPolicy.from_dict({**body.model_dump(), "fqdn": fqdn})
        versions = service.set_policy(caller, policy)
        return {"policy": service.policy(caller, fqdn).to_dict(), "versions": dict(versions)}

    @app.delete("/v1/policies/{fqdn}")
    async def delete_policy(fqdn: str, caller: TenantOrOperator) -> dict[str, Any]:
        versions = service.delete_policy(caller, fqdn)
        return {"deleted": fqdn, "versions": dict(versions)}


def _install_table_routes(app: FastAPI, service: PceService) -> None:
    """Routes: distribution and routes (SFR-4, SFR-11)."""

    @app.get("/v1/tables/{sr}")
    async def get_table(
        sr: str,
        caller: RouterOrOperator,
        since: Annotated[int, Query(ge=0, description="the version the SR has")] = 0,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold")] = 0.0,
    ) -> Response:
        """The SR's forwarding table if newer than `since`, else 304 after up to `wait` s."""
        table = await service.wait_table(caller, sr, since, wait)
        if table is None:
            current = service.table(caller, sr)
            return Response(status_code=304, headers=_table_headers(service, current))
        return Response(
            table.body(), media_type="application/json", headers=_table_headers(service, table)
        )

    @app.get("/v1/routes/{fqdn}")
    async def get_routes(
        fqdn: str,
        caller: TenantOrOperator,
        from_node: Annotated[str | None, Query(alias="from", description="an SR or UE")] = None,
    ) -> dict[str, Any]:
        tables = service.routes(caller, fqdn, from_node)
        return {"fqdn": normalise_fqdn(fqdn), "tables": [t.to_dict() for t in tables]}


def _install_cert_routes(app: FastAPI, service: PceService) -> None:
    """Routes: content certificates (SFR-22, SFR-23)."""

    @app.get("/v1/certs")
    async def list_certs(caller: TenantOrOperator) -> dict[str, Any]:
        """Certificates of the FQDNs the caller manages: metadata only."""
        return {"certificates": service.certs(caller)}

    @app.get("/v1/certs/ca")
    async def get_ca(caller: AnyRole) -> dict[str, Any]:
        """The platform CA's certificate (what clients trust for platform-issued ones)."""
        return {"ca": service.ca_certificate()}

    @app.get("/v1/certs/sr/{sr}")
    async def get_sr_certs(
        sr: str,
        caller: RouterOrOperator,
        since: Annotated[int, Query(ge=0, description="the version the SR has")] = 0,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold")] = 0.0,
    ) -> Response:
        """The SR's certificates and keys if newer than `since`, else 304 after `wait` s."""
        bundle, current, generation = await service.wait_certs(caller, sr, since, wait)
        headers = {
            "X-Flame-Cert-Version": str(current.version),
            "X-Flame-Cert-Generation": generation,
            "Cache-Control": "no-store",
        }
        if bundle is None:
            return Response(status_code=304, headers=headers)
        headers["X-Flame-Cert-Version"] = str(bundle.version)
        return Response(service.cert_body(bundle), media_type="application/json", headers=headers)

    @app.post("/v1/certs/endpoint")
    async def issue_endpoint_cert(
        body: EndpointCertBody, caller: RouterOrOperator
    ) -> dict[str, Any]:
        """A platform server certificate (and key) for a TLS endpoint's host (hop TLS)."""
        return service.endpoint_certificate(caller, body.host, body.days)

    @app.get("/v1/certs/{fqdn}")
    async def get_cert(fqdn: str, caller: TenantOrOperator) -> dict[str, Any]:
        """An FQDN's certificate chain and metadata; never its key."""
        return service.cert(caller, fqdn)

    @app.put("/v1/certs/{fqdn}")
    async def put_cert(fqdn: str, body: CertBody, caller: TenantOrOperator) -> dict[str, Any]:
        """Upload a chain and key for an FQDN delegated to the caller (SFR-22)."""
        return service.put_cert(caller, fqdn, body.chain, body.key, body.redirect_http)

    @app.patch("/v1/certs/{fqdn}")
    async def patch_cert(
        fqdn: str, body: CertOptionsBody, caller: TenantOrOperator
    ) -> dict[str, Any]:
        """Redirect plain HTTP to https for the FQDN at every SR (or stop)."""
        return service.set_cert_options(caller, fqdn, redirect_http=body.redirect_http)

    @app.delete("/v1/certs/{fqdn}")
    async def delete_cert(fqdn: str, caller: TenantOrOperator) -> dict[str, Any]:
        """Remove an uploaded certificate (the platform's comes back if it applies)."""
        return {"deleted": service.delete_cert(caller, fqdn)}

    @app.post("/v1/certs/{fqdn}/renew")
    async def renew_cert(fqdn: str, caller: TenantOrOperator) -> dict[str, Any]:
        """Issue the FQDN's platform certificate again now (SFR-23)."""
        return service.renew_cert(caller, fqdn)


def _table_headers(service: PceService, table: PublishedTable) -> dict[str, str]:
    return {
        "X-Flame-Table-Version": str(table.table.version),
        "X-Flame-Pce-Generation": service.generation,
        "Cache-Control": "no-store",
    }


def _topology_dict(
    topology: Topology, detected: set[frozenset[str]] | None = None
) -> dict[str, Any]:
    return {
        "name": topology.name,
        "locations": {
            name: {"latitude": p.latitude, "longitude": p.longitude}
            for name, p in sorted(topology.locations.items())
        },
        "nodes": [encode_node(n) for n in topology.nodes.values()],
        "links": [
            {**encode_link(k), "detected": frozenset((k.a, k.b)) in (detected or set())}
            for k in topology.links
        ],
    }


def _node_from(body: NodeBody, topology: Topology) -> tuple[Node, list[Link]]:
    """A new node and its links from a request body, named locations resolved."""
    location: GeoPoint | None = None
    location_name: str | None = None
    if isinstance(body.location, str):
        location_name = body.location
        location = topology.locations.get(body.location)
        if location is None:
            known = ", ".join(sorted(topology.locations)) or "none"
            raise UserError(
                f"node '{body.id}': unknown location '{body.location}'; known: {known}",
                node=body.id,
            )
    elif body.location is not None:
        location = GeoPoint(body.location.latitude, body.location.longitude)
    if body.address is not None:
        try:
            loopback = ipaddress.ip_address(body.address).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UserError(
                f"node '{body.id}': address must be a loopback IP address (127.0.0.0/8 or ::1), "
                f"got '{body.address}'",
                node=body.id,
            )
    capacity = (
        None
        if body.capacity is None
        else Resources(body.capacity.cpus, body.capacity.memory_bytes, body.capacity.disk_bytes)
    )
    node = Node(
        id=body.id,
        kind=body.kind,
        location=location,
        location_name=location_name,
        sr=body.sr,
        address=body.address,
        capacity=capacity,
        vim=body.vim,
    )
    links = [
        Link(
            a=body.id,
            b=k.to,
            latency_ms=k.latency_ms,
            bandwidth_bps=k.bandwidth_bps,
            cost=k.cost,
            state=k.state,
            link_class=k.link_class,
        )
        for k in body.links
    ]
    return node, links
