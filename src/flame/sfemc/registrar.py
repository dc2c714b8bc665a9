"""Connecting endpoints: registering an SF's FQDN with the cluster's service router (SFEMC-5/7).

`Registrar` is the small interface the reconciler uses; `InProcessRegistrar` keeps a dict (tests,
FLAME-in-a-box without a PCE) and `HttpRegistrar` talks to the SFR's PCE through
`flame.sfr.client.AsyncPceClient`.

Delegated name registration (SFEMC-7): an endpoint may register an FQDN only if the name (or a
domain above it) is delegated to the endpoint's tenant. The SFEMC registers as the operator, whom
the PCE trusts with any name, so the check is made here, against the PCE's delegations, before
anything is registered. Errors::

    RegistrationRefused (PermissionDenied, 403)   permanent: the tenant does not own the name
    RegistrarUnavailable (UserError, 503)         temporary: retry with back-off
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from typing import ClassVar, Protocol

import httpx

from flame.common.errors import PermissionDenied, UserError
from flame.common.tls import require_private_url
from flame.sfr.client import AsyncPceClient, PceUnavailable
from flame.sfr.models import Endpoint

__all__ = [
    "HttpRegistrar",
    "InProcessRegistrar",
    "Registrar",
    "RegistrarUnavailable",
    "RegistrationRefused",
    "owner_of",
]


class RegistrationRefused(PermissionDenied):
    code: ClassVar[str] = "registration_refused"


class RegistrarUnavailable(UserError):
    code: ClassVar[str] = "registrar_unavailable"
    http_status: ClassVar[int] = 503


def owner_of(fqdn: str, delegations: Mapping[str, str]) -> str | None:
    """The tenant of the most specific delegation covering `fqdn` (DNS zone-cut semantics)."""
    labels = fqdn.lower().removesuffix(".").split(".")
    for i in range(len(labels)):
        tenant = delegations.get(".".join(labels[i:]))
        if tenant is not None:
            return tenant
    return None


def check_delegation(endpoint: Endpoint, delegations: Mapping[str, str]) -> None:
    owner = owner_of(endpoint.fqdn, delegations)
    if owner is not None and owner == endpoint.tenant:
        return
    why = (
        "it is delegated to another tenant"
        if owner is not None
        else "it is not delegated to any tenant"
    )
    raise RegistrationRefused(
        f"endpoint '{endpoint.sfe}' of tenant '{endpoint.tenant}' may not register "
        f"'{endpoint.fqdn}': {why}. Only chains of the tenant owning a name may register it "
        f"(SFEMC-7); ask the operator to delegate it "
        f'(flame: PUT /v1/delegations/{endpoint.fqdn} with {{"tenant": "{endpoint.tenant}"}}).',
        sfe=endpoint.sfe,
        fqdn=endpoint.fqdn,
        tenant=endpoint.tenant,
    )


class Registrar(Protocol):
    async def register(self, endpoint: Endpoint) -> None:
        """Idempotent; RegistrationRefused if the tenant does not own the FQDN."""
        ...

    async def withdraw(self, sfe: str) -> None:
        """Idempotent: withdrawing what is not registered succeeds."""
        ...

    async def registered(self) -> list[Endpoint]: ...

    async def owner(self, fqdn: str) -> str | None:
        """The tenant the FQDN is delegated to, if any (the orchestrator's plan checks it)."""
        ...

    async def available(self) -> bool:
        """A cheap probe: would a call go through now? (Wakes work parked while it was not.)"""
        ...

    async def close(self) -> None: ...


class InProcessRegistrar:
    """Registrations and delegations in dicts; the same rules as the PCE path."""

    def __init__(self, delegations: Mapping[str, str] | None = None) -> None:
        self.delegations: dict[str, str] = dict(delegations or {})
        self.endpoints: dict[str, Endpoint] = {}
        self.calls: list[tuple[str, str]] = []  # ("register" | "withdraw", sfe), for tests

    def delegate(self, name: str, tenant: str) -> None:
        self.delegations[name.lower()] = tenant

    async def register(self, endpoint: Endpoint) -> None:
        check_delegation(endpoint, self.delegations)
        self.calls.append(("register", endpoint.sfe))
        self.endpoints[endpoint.sfe] = endpoint

    async def withdraw(self, sfe: str) -> None:
        self.calls.append(("withdraw", sfe))
        self.endpoints.pop(sfe, None)

    async def registered(self) -> list[Endpoint]:
        return list(self.endpoints.values())

    async def owner(self, fqdn: str) -> str | None:
        return owner_of(fqdn, self.delegations)

    async def available(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class HttpRegistrar:
    """Registers at the PCE (`POST /v1/registrations`) with an operator token."""

    def __init__(
        self,
        urls: str | list[str],
        token: str | None,
        *,
        timeout: float = 5.0,
        delegation_ttl_s: float = 2.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`verify`: httpx's, e.g. `flame.common.tls.client_verify(config.ca_file)` for PCEs
        serving HTTPS with platform certificates. The token never goes to another host in
        clear: an `http://` PCE URL must be loopback (`ClearTextToken` otherwise)."""
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        for url in self._urls:
            require_private_url(url, token, what="the PCE")
        self._client = AsyncPceClient(
            urls,
            token,
            timeout=timeout,
            transport=None if verify is True else httpx.AsyncHTTPTransport(verify=verify),
        )
        self._token = token
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=verify,
        )
        self._ttl = delegation_ttl_s
        self._delegations: dict[str, str] = {}
        self._fetched = float("-inf")

    async def _current_delegations(self, *, fresh: bool = False) -> dict[str, str]:
        # Cached briefly: a connect must stay fast, and delegations change rarely.
        if not fresh and time.monotonic() - self._fetched < self._ttl:
            return self._delegations
        last: Exception | None = None
        for url in self._urls:
            try:
                response = await self._http.get(url.rstrip("/") + "/v1/delegations")
            except httpx.HTTPError as exc:
                last = exc
                continue
            if response.status_code == 200:
                items = response.json().get("delegations", [])
                self._delegations = {str(d["name"]): str(d["tenant"]) for d in items}
                self._fetched = time.monotonic()
                return self._delegations
            last = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        raise RegistrarUnavailable(
            f"cannot read delegations from the PCE ({last}); will retry", urls=self._urls
        )

    async def register(self, endpoint: Endpoint) -> None:
        check_delegation(endpoint, await self._current_delegations())
        try:
            await self._client.register(endpoint)
        except PceUnavailable as exc:
            raise RegistrarUnavailable(exc.message) from None

    async def withdraw(self, sfe: str) -> None:
        try:
            await self._client.withdraw(sfe)
        except PceUnavailable as exc:
            raise RegistrarUnavailable(exc.message) from None
        except UserError as exc:
            if exc.code != "not_found":  # not registered: withdrawn already, which is the goal
                raise

    async def registered(self) -> list[Endpoint]:
        try:
            return [r.endpoint for r in await self._client.registrations()]
        except PceUnavailable as exc:
            raise RegistrarUnavailable(exc.message) from None

    async def owner(self, fqdn: str) -> str | None:
        # Always asked of the PCE: a plan's check, right after the operator delegated the name
        # (`flame delegate` then `flame deploy`), must not see a cached answer from before.
        return owner_of(fqdn, await self._current_delegations(fresh=True))

    async def available(self) -> bool:
        for url in self._urls:
            try:
                response = await self._http.get(url.rstrip("/") + "/health", timeout=1.0)
            except httpx.HTTPError:
                continue
            if response.status_code == 200 and response.json().get("role") == "active":
                return True
        return False

    async def close(self) -> None:
        await self._client.aclose()
        await self._http.aclose()
