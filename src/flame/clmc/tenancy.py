"""Who may read what on the CLMC: roles to query rights, and the FQDNs delegated to each tenant.

The platform database `flame` holds what the service routers, the SFEMC and the UEs report for
every tenant. A tenant reads it narrowed to its own rows (`flame.clmc.influxql.scope`): rows
whose `fqdn` tag is a name delegated to it or a name under one (unless a more specific
delegation gives that subdomain to someone else), and, in measurements with a `tenant` tag,
rows of its own tenant id.

Delegations live in the PCE's registry (`GET /v1/delegations`). The CLMC and the SFR packages
do not import each other, so the CLMC polls them over HTTP (`HttpDelegations`, every second,
with the platform token); tests and fixed set-ups give them as data (`StaticDelegations`).
Both fail closed: while the delegations are unknown (before the first answer, or when the PCE
has not answered for `max_stale_s`), tenants see no row of `flame` and their alert rules on it
see no data and give no verdict. `health()` says which, for the CLMC's `/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from flame.clmc.influxql.scope import Access, RowScope, Zone, covers
from flame.common.auth import Principal, Role

__all__ = [
    "PLATFORM_DATABASE",
    "DelegationMap",
    "Delegations",
    "HttpDelegations",
    "StaticDelegations",
    "access_for",
    "access_of_tenant",
]

log = logging.getLogger(__name__)

PLATFORM_DATABASE = "flame"  # where the SRs, the SFEMC and the UEs report


class DelegationMap:
    """Delegated names and their tenants, as the PCE's registry has them at one moment."""

    def __init__(self, owners: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        pairs = owners.items() if isinstance(owners, Mapping) else owners
        kept: dict[str, str] = {}
        for name, tenant in pairs:
            try:
                Zone(name)  # only lower-case DNS names reach SQL
                RowScope(tenant)
            except ValueError as exc:
                log.warning("ignoring delegation %r -> %r: %s", name, tenant, exc)
                continue
            kept[name] = tenant
        self.owners: Mapping[str, str] = kept
        self._scopes: dict[str, RowScope] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DelegationMap) and self.owners == other.owners

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.owners)

    def names_of(self, tenant: str) -> frozenset[str]:
        return frozenset(name for name, owner in self.owners.items() if owner == tenant)

    def owner_of(self, fqdn: str) -> str | None:
        """The tenant of `fqdn` by its most specific delegation (as the PCE's registry)."""
        labels = fqdn.split(".")
        for i in range(len(labels)):
            owner = self.owners.get(".".join(labels[i:]))
            if owner is not None:
                return owner
        return None

    def scope_of(self, tenant: str) -> RowScope:
        """The rows of the platform database `tenant` may read."""
        found = self._scopes.get(tenant)
        if found is None:
            zones = frozenset(
                Zone(
                    name,
                    frozenset(
                        other
                        for other, owner in self.owners.items()
                        if owner != tenant and other != name and covers(name, other)
                    ),
                )
                for name in self.names_of(tenant)
            )
            found = self._scopes[tenant] = RowScope(tenant, zones)
        return found


class Delegations(Protocol):
    """Where the CLMC learns which names are delegated to which tenant."""

    def current(self) -> DelegationMap | None:
        """The delegations in force, or None while they are unknown (fail closed)."""
        ...

    def names_of(self, tenant: str) -> frozenset[str]:
        """The names delegated to `tenant` (none while unknown)."""
        ...

    def health(self) -> dict[str, Any]:
        """State for the CLMC's `/health`."""
        ...


class StaticDelegations:
    """Delegations given as data: `{"x.example": "acme", ...}` (tests, fixed set-ups)."""

    def __init__(self, owners: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self.map = DelegationMap(owners)

    def current(self) -> DelegationMap:
        return self.map

    def names_of(self, tenant: str) -> frozenset[str]:
        return self.map.names_of(tenant)

    def health(self) -> dict[str, Any]:
        return {"source": "static", "state": "ok", "delegations": len(self.map)}


class HttpDelegations:
    """Delegations polled from the PCE (`GET <pce>/v1/delegations`) every `period_s`.

    `urls` are tried in order (an active PCE and its standbys; a standby answers 503). The last
    answer stays in force while the PCE is unreachable, for at most `max_stale_s`; after that,
    and before the first answer, `current()` is None and tenants see nothing of `flame`.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None,
        *,
        period_s: float = 1.0,
        timeout_s: float = 2.0,
        max_stale_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Any = time.monotonic,
        verify: ssl.SSLContext | bool = True,  # the platform CA for an https PCE
    ) -> None:
        if not urls:
            raise ValueError("HttpDelegations needs at least one PCE URL")
        self._verify = verify
        self.urls = [u.rstrip("/") for u in urls]
        self.period_s = period_s
        self.max_stale_s = max_stale_s
        self._token = token
        self._timeout_s = timeout_s
        self._transport = transport
        self._clock = clock
        self._map: DelegationMap | None = None
        self._at: float | None = None  # clock time of the last answer
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # -- what the CLMC reads ----------------------------------------------------------------------

    def current(self) -> DelegationMap | None:
        if self._map is None or self._at is None:
            return None
        if self._clock() - self._at > self.max_stale_s:
            return None
        return self._map

    def names_of(self, tenant: str) -> frozenset[str]:
        found = self.current()
        return frozenset() if found is None else found.names_of(tenant)

    def health(self) -> dict[str, Any]:
        known = self.current()
        age = None if self._at is None else round(self._clock() - self._at, 3)
        return {
            "source": "pce",
            "state": "ok" if known is not None else ("unknown" if self._at is None else "stale"),
            "age_s": age,
            "refresh_s": self.period_s,
            "delegations": None if known is None else len(known),
            "error": self._error,
        }

    # -- polling ------------------------------------------------------------------------------------

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=self._timeout_s,
            transport=self._transport,
            trust_env=False,
            verify=self._verify,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="clmc-delegations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never stop polling; the next round may work
                log.exception("reading the delegations failed")
            await asyncio.sleep(self.period_s)

    async def refresh(self) -> bool:
        """Ask the PCEs once; True when one answered with the delegations."""
        client = self._client
        if client is None:
            raise RuntimeError("HttpDelegations.start() first")
        problems = []
        for url in self.urls:
            try:
                response = await client.get(url + "/v1/delegations")
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            if response.status_code != 200:
                problems.append(f"{url}: HTTP {response.status_code}")
                continue
            try:
                items = response.json()["delegations"]
                found = DelegationMap((str(d["name"]), str(d["tenant"])) for d in items)
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{url}: unreadable answer ({type(exc).__name__})")
                continue
            if self._error is not None or self._map is None:
                log.info("delegations from %s: %d names", url, len(found))
            elif found != self._map:
                log.info("delegations changed: %d names", len(found))
            self._map, self._at, self._error = found, self._clock(), None
            return True
        error = "; ".join(problems)
        if error != self._error:
            log.warning(
                "cannot read the delegations (%s); tenants see no rows of %s once the last "
                "answer is %gs old",
                error,
                PLATFORM_DATABASE,
                self.max_stale_s,
            )
        self._error = error
        return False


def access_of_tenant(
    user: str, tenant: str, delegations: Delegations | None, shared: str = PLATFORM_DATABASE
) -> Access:
    """What `tenant` may query: its own databases, and `shared` narrowed to its rows."""
    known = None if delegations is None else delegations.current()
    rows = None if known is None else known.scope_of(tenant)
    return Access(user=user, tenant=tenant, shared=shared, rows=rows)


def access_for(principal: Principal, delegations: Delegations | None) -> Access | None:
    """The query rights of `principal`; None for the operator (everything)."""
    if principal.role is Role.OPERATOR:
        return None
    if principal.role is Role.TENANT and principal.tenant is not None:
        return access_of_tenant(principal.name, principal.tenant, delegations)
    # A router writes its measurements and reads nothing (its gate keeps it off /query).
    return Access(user=principal.name, tenant=None, read_shared=False)
