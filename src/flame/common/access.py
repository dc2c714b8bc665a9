"""One authorization policy for every FLAME HTTP API: each route declares who may call it.

A route takes its caller as one of the gate types below (``caller: OperatorOnly``), or as
``Annotated[Principal, Depends(Gate(roles, scope))]`` for another rule, or, when it needs no token, lists ``dependencies=[PUBLIC]``. The gate is a FastAPI dependency that checks
the caller's role before the handler runs; what the caller may touch inside that role (its own
tenant's services, FQDNs delegated to it, its own databases) is checked by the handler, and the
gate's ``scope`` names that rule so the route table documents it.

Default deny: :func:`require_declared` fails an app that has a route without a gate, and every
service calls it when it builds its app, so a route added without a rule cannot be served. The
authorization matrix test (tests/security) reads the same declarations through
:func:`route_rules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Route

from flame.common.auth import Principal, Role
from flame.common.errors import AuthenticationError, PermissionDenied

__all__ = [
    "PRINCIPAL_KEY",
    "PUBLIC",
    "AccessRule",
    "AnyRole",
    "Gate",
    "OperatorOnly",
    "RouterOrOperator",
    "TenantOrOperator",
    "require_declared",
    "route_rules",
    "set_principal",
]

PRINCIPAL_KEY = "flame.principal"  # where an app's authentication middleware leaves the caller

# FastAPI's own documentation routes: public by design (they describe the API, hold no data).
_DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True)
class AccessRule:
    """Who may call a route (``roles``; empty for a public route) and on what (``scope``)."""

    roles: frozenset[Role]
    scope: str

    @property
    def public(self) -> bool:
        return not self.roles


def set_principal(scope: MutableMapping[str, Any], principal: Principal) -> None:
    """Called by an authentication middleware once it knows who the caller is."""
    scope[PRINCIPAL_KEY] = principal


class Gate:
    """A route's access rule as a dependency: the caller if its role is allowed, else 401/403."""

    def __init__(self, roles: Iterable[Role], scope: str) -> None:
        self.rule = AccessRule(frozenset(roles), scope)

    def __call__(self, request: Request) -> Principal | None:
        principal = request.scope.get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):
            if self.rule.public:
                return None  # public routes never act on behalf of a caller
            raise AuthenticationError(
                "missing Authorization header; send 'Authorization: Bearer <token>'"
            )
        if self.rule.public or principal.role in self.rule.roles:
            return principal
        allowed = " or ".join(sorted(r.value for r in self.rule.roles))
        needs = (
            "requires the operator role"
            if self.rule.roles == {Role.OPERATOR}
            else f"is for {allowed} principals"
        )
        raise PermissionDenied(
            f"this operation {needs}; {principal.name!r} is a {principal.role.value} principal",
            principal=principal.name,
        )

    def __repr__(self) -> str:
        return f"Gate({sorted(r.value for r in self.rule.roles)}, {self.rule.scope!r})"


OperatorOnly = Annotated[Principal, Depends(Gate({Role.OPERATOR}, "anything"))]
"""Platform staff only."""

TenantOrOperator = Annotated[
    Principal, Depends(Gate({Role.OPERATOR, Role.TENANT}, "a tenant: its own resources only"))
]
"""A media service provider on what it owns (the handler checks ownership), or the operator."""

RouterOrOperator = Annotated[
    Principal, Depends(Gate({Role.OPERATOR, Role.ROUTER}, "a router: its own table only"))
]
"""A service router on its own data (the handler checks which), or the operator."""

AnyRole = Annotated[
    Principal,
    Depends(Gate({Role.OPERATOR, Role.TENANT, Role.ROUTER}, "any token: about itself only")),
]
"""Any valid token; the route answers only about the caller itself."""

PUBLIC = Depends(Gate((), "public: no token, no data"))
"""For ``dependencies=[PUBLIC]``: health and liveness routes that reveal nothing."""


def _gates(dependant: Dependant) -> Iterator[Gate]:
    if isinstance(dependant.call, Gate):
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _gates(sub)


def route_rules(app: FastAPI) -> dict[tuple[str, str], AccessRule | None]:
    """(method, path) -> the route's rule, or None for a route that declares none."""
    rules: dict[tuple[str, str], AccessRule | None] = {}
    _collect(app.routes, "", (), rules)
    return rules


def _collect(
    routes: Iterable[Any],
    prefix: str,
    inherited: tuple[AccessRule, ...],
    rules: dict[tuple[str, str], AccessRule | None],
) -> None:
    for route in routes:
        if isinstance(route, APIRoute):
            found = [*inherited, *(g.rule for g in _gates(route.dependant))]
            # Two gates on one route would allow only what both allow; keep it to one.
            rule = found[0] if len(found) == 1 else None
            for method in sorted(route.methods or ()):
                rules[(method, prefix + route.path_format)] = rule
        elif isinstance(route, Route):  # mounted sub-apps are checked as apps of their own
            public = AccessRule(frozenset(), "public: API documentation")
            for method in sorted(route.methods or ("GET",)):
                path = prefix + route.path
                rules[(method, path)] = public if path in _DOC_PATHS else None
        elif hasattr(route, "original_router") and hasattr(route, "include_context"):
            # FastAPI >= 0.16x keeps an included APIRouter as one lazy entry.
            context = route.include_context
            gates = tuple(
                d.dependency.rule
                for d in getattr(context, "dependencies", ())
                if isinstance(getattr(d, "dependency", None), Gate)
            )
            _collect(
                route.original_router.routes,
                prefix + getattr(context, "prefix", ""),
                (*inherited, *gates),
                rules,
            )


def require_declared(app: FastAPI) -> FastAPI:
    """Raise if a route of ``app`` declares no access rule (default deny); returns ``app``."""
    missing = [f"{m} {p}" for (m, p), rule in route_rules(app).items() if rule is None]
    if missing:
        raise RuntimeError(
            "routes without an access rule (take the caller as OperatorOnly, TenantOrOperator, "
            "RouterOrOperator, AnyRole or a Gate, or add dependencies=[PUBLIC]): "
            + ", ".join(missing)
        )
    return app
