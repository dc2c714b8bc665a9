"""Typed clients of the PCE API: `PceClient` (blocking, for the CLI) and `AsyncPceClient`
(for asyncio services such as the SFEMC, which connects endpoints with `register` and
disconnects them with `withdraw`, SFR-11).

Both take one PCE URL or several (the active PCE and its standbys, SFR-20) and try them in order,
starting with the last one that answered. Every operation is idempotent (registering the same
endpoint twice, taking a link down twice), so one that failed for want of an active PCE is
simply sent to the next.

Errors come back as the server's exceptions, rebuilt from its JSON body so callers can branch on
them (never on message text)::

    UserError                  400, 422  the request was wrong; permanent
    ├── AuthenticationError    401
    ├── PermissionDenied       403
    ├── NotFound               404
    ├── Conflict               409
    └── PceUnavailable         no PCE reachable, or 5xx / 503 from all: temporary, retry later

`PceUnavailable` is a `UserError` too, so the CLI exits 1 with its message.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import httpx

from flame.common.errors import AuthenticationError, PermissionDenied, UserError
from flame.common.tls import require_private_url
from flame.sfr.models import Endpoint, ForwardingTable, RoutingPolicy
from flame.sfr.registry import Conflict, Delegation, NotFound, Registration

__all__ = ["AsyncPceClient", "PceClient", "PceUnavailable", "TableUpdate"]

T = TypeVar("T")

_BY_STATUS: dict[int, type[UserError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
}
_RESERVED = {"error", "message"}


class PceUnavailable(UserError):
    """No PCE answered usefully (unreachable, timed out, a standby, or a server error).

    Temporary: SRs keep their last tables meanwhile; retry later or on another PCE.
    """

    code: ClassVar[str] = "pce_unavailable"
    http_status: ClassVar[int] = 503


@dataclass(frozen=True, slots=True)
class TableUpdate:
    """The answer to a long-poll: a newer table, or None if nothing changed in time."""

    table: ForwardingTable | None
    version: int  # the PCE's current version for the SR
    generation: str  # changes only when the PCE database is replaced


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API request and how to read its answer; shared by both clients."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    body: Any = None
    params: dict[str, Any] | None = None
    ok: tuple[int, ...] = (200, 201)
    timeout: float | None = None  # None: the client's


def _seg(value: str) -> str:
    return quote(value, safe="@:")


def _json(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    return data if isinstance(data, dict) else {"value": data}


def _error(response: httpx.Response, url: str) -> UserError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:200] or response.reason_phrase}
    message = str(body.get("message") or f"HTTP {response.status_code}")
    context = {k: v for k, v in body.items() if k not in _RESERVED}
    if response.status_code >= 500:
        return PceUnavailable(
            f"PCE at {url}: {message}", status=response.status_code, error=body.get("error")
        )
    cls = _BY_STATUS.get(response.status_code, UserError)
    return cls(message, **context)


def _unreachable(url: str, exc: httpx.HTTPError) -> PceUnavailable:
    return PceUnavailable(
        f"cannot reach the PCE at {url} ({type(exc).__name__}: {exc or 'no detail'}). "
        "Is it running ('flame serve pce --topology FILE')? Point --pce or pce_url at it.",
        url=url,
    )


def _usefulness(exc: PceUnavailable) -> int:
    """Which failure to report when every PCE failed: a server's own error says the most, then
    a standby's answer, then an unreachable URL."""
    status = exc.context.get("status")
    return 0 if isinstance(status, int) and status != 503 else 1 if status == 503 else 2


def _urls(urls: str | Sequence[str]) -> list[str]:
    found = [urls] if isinstance(urls, str) else list(urls)
    if not found:
        raise UserError("give at least one PCE URL, e.g. http://127.0.0.1:7070")
    return [u.rstrip("/") for u in found]


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- the calls ------------------------------------------------------------------------------------


def _topology() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/topology", _json)


def _link_state(a: str, b: str, up: bool) -> _Call[dict[str, Any]]:
    return _Call("POST", f"/v1/topology/links/{_seg(a)}/{_seg(b)}/{'up' if up else 'down'}", _json)


def _update_link(a: str, b: str, body: dict[str, Any]) -> _Call[dict[str, Any]]:
    return _Call("PUT", f"/v1/topology/links/{_seg(a)}/{_seg(b)}", _json, body)


def _registrations() -> _Call[list[Registration]]:
    return _Call(
        "GET",
        "/v1/registrations",
        lambda r: [Registration.from_dict(x) for x in r.json()["registrations"]],
    )


def _register(endpoint: Endpoint) -> _Call[Registration]:
    body = {k: v for k, v in endpoint.to_dict().items() if v is not None}
    return _Call(
        "POST",
        "/v1/registrations",
        lambda r: Registration.from_dict(r.json()["registration"]),
        body,
    )


def _withdraw(sfe: str) -> _Call[Registration]:
    return _Call(
        "DELETE",
        f"/v1/registrations/{_seg(sfe)}",
        lambda r: Registration.from_dict(r.json()["withdrawn"]),
    )


def _delegate(name: str, tenant: str) -> _Call[Delegation]:
    return _Call(
        "PUT",
        f"/v1/delegations/{_seg(name)}",
        lambda r: Delegation(**r.json()),
        {"tenant": tenant},
    )


def _delegations() -> _Call[list[Delegation]]:
    return _Call(
        "GET",
        "/v1/delegations",
        lambda r: [Delegation(**d) for d in r.json()["delegations"]],
    )


def _undelegate(name: str) -> _Call[Delegation]:
    return _Call("DELETE", f"/v1/delegations/{_seg(name)}", lambda r: Delegation(**r.json()))


def _set_policy(policy: RoutingPolicy) -> _Call[RoutingPolicy]:
    body = {k: v for k, v in policy.to_dict().items() if k != "fqdn"}
    return _Call(
        "PUT",
        f"/v1/policies/{_seg(policy.fqdn)}",
        lambda r: RoutingPolicy.from_dict(r.json()["policy"]),
        body,
    )


def _policy(fqdn: str) -> _Call[RoutingPolicy]:
    return _Call("GET", f"/v1/policies/{_seg(fqdn)}", lambda r: RoutingPolicy.from_dict(r.json()))


def _delete_policy(fqdn: str) -> _Call[dict[str, Any]]:
    return _Call("DELETE", f"/v1/policies/{_seg(fqdn)}", _json)


def _table_update(response: httpx.Response) -> TableUpdate:
    version = int(response.headers.get("X-Flame-Table-Version", "0"))
    generation = response.headers.get("X-Flame-Pce-Generation", "")
    if response.status_code == 304:
        return TableUpdate(None, version, generation)
    return TableUpdate(ForwardingTable.from_dict(response.json()), version, generation)


def _table(sr: str, since: int, wait: float, timeout: float) -> _Call[TableUpdate]:
    return _Call(
        "GET",
        f"/v1/tables/{_seg(sr)}",
        _table_update,
        params={"since": since, "wait": wait},
        ok=(200, 304),
        timeout=max(timeout, wait + 10.0),  # the server holds the request up to `wait`
    )


def _routes(fqdn: str, from_node: str | None) -> _Call[list[ForwardingTable]]:
    return _Call(
        "GET",
        f"/v1/routes/{_seg(fqdn)}",
        lambda r: [ForwardingTable.from_dict(t) for t in r.json()["tables"]],
        params={"from": from_node} if from_node else None,
    )


def _health() -> _Call[dict[str, Any]]:
    return _Call("GET", "/health", _json)


def _cert_call(
    method: str, fqdn: str = "", suffix: str = "", body: Any = None
) -> _Call[dict[str, Any]]:
    path = "/v1/certs" + (f"/{_seg(fqdn)}" if fqdn else "") + suffix
    return _Call(method, path, _json, body)


# -- the clients ----------------------------------------------------------------------------------


class _Base:
    def __init__(self, urls: str | Sequence[str], token: str | None, timeout: float) -> None:
        self.urls = _urls(urls)
        self.timeout = timeout
        self._headers = _headers(token)
        self._first = 0  # the URL that answered last

    def _order(self) -> list[int]:
        n = len(self.urls)
        return [(self._first + i) % n for i in range(n)]

    def _read(self, call: _Call[T], response: httpx.Response, url: str) -> T:
        if response.status_code not in call.ok:
            raise _error(response, url)
        return call.decode(response)


class PceClient(_Base):
    """Blocking client (the CLI's); use as a context manager or call `close()`.

    It refuses to send a token over plain HTTP to anything but loopback (`ClearTextToken`);
    `verify` is httpx's (`flame.common.tls.client_verify(config.ca_file)`)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(urls, token, timeout)
        for url in self.urls:
            require_private_url(url, token, what="the PCE")
        self._http = httpx.Client(
            headers=self._headers, timeout=timeout, transport=transport, verify=verify
        )

    def __enter__(self) -> PceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        failures: list[PceUnavailable] = []
        for i in self._order():
            url = self.urls[i]
            try:
                response = self._http.request(
                    call.method,
                    url + call.path,
                    json=call.body,
                    params=call.params,
                    timeout=call.timeout or self.timeout,
                )
                result = self._read(call, response, url)
            except httpx.HTTPError as exc:
                failures.append(_unreachable(url, exc))
            except PceUnavailable as exc:
                failures.append(exc)
            else:
                self._first = i
                return result
        raise min(failures, key=_usefulness)

    def health(self) -> dict[str, Any]:
        return self._send(_health())

    def topology(self) -> dict[str, Any]:
        return self._send(_topology())

    def link_down(self, a: str, b: str) -> dict[str, Any]:
        return self._send(_link_state(a, b, up=False))

    def link_up(self, a: str, b: str) -> dict[str, Any]:
        return self._send(_link_state(a, b, up=True))

    def update_link(self, a: str, b: str, **changes: float | None) -> dict[str, Any]:
        """`latency_ms=` and/or `cost=` (None clears the cost)."""
        return self._send(_update_link(a, b, changes))

    def registrations(self) -> list[Registration]:
        return self._send(_registrations())

    def register(self, endpoint: Endpoint) -> Registration:
        return self._send(_register(endpoint))

    def withdraw(self, sfe: str) -> Registration:
        return self._send(_withdraw(sfe))

    def delegate(self, name: str, tenant: str) -> Delegation:
        return self._send(_delegate(name, tenant))

    def undelegate(self, name: str) -> Delegation:
        return self._send(_undelegate(name))

    def delegations(self) -> list[Delegation]:
        return self._send(_delegations())

    def policy(self, fqdn: str) -> RoutingPolicy:
        return self._send(_policy(fqdn))

    def set_policy(self, policy: RoutingPolicy) -> RoutingPolicy:
        return self._send(_set_policy(policy))

    def delete_policy(self, fqdn: str) -> None:
        self._send(_delete_policy(fqdn))

    def table(self, sr: str, since: int = 0, wait: float = 0.0) -> TableUpdate:
        """The SR's table if newer than `since`, waiting up to `wait` seconds (long-poll)."""
        return self._send(_table(sr, since, wait, self.timeout))

    def routes(self, fqdn: str, from_node: str | None = None) -> list[ForwardingTable]:
        """Ranked routes for `fqdn` per SR (or from one SR or UE), as one-FQDN tables."""
        return self._send(_routes(fqdn, from_node))

    # Content certificates (SFR-22, SFR-23): documents as the API returns them.

    def certs(self) -> list[dict[str, Any]]:
        return list(self._send(_cert_call("GET"))["certificates"])

    def cert(self, fqdn: str) -> dict[str, Any]:
        return self._send(_cert_call("GET", fqdn))

    def put_cert(
        self, fqdn: str, chain: str, key: str, redirect_http: bool | None = None
    ) -> dict[str, Any]:
        body = {"chain": chain, "key": key, "redirect_http": redirect_http}
        return self._send(_cert_call("PUT", fqdn, body=body))

    def set_cert_options(self, fqdn: str, *, redirect_http: bool) -> dict[str, Any]:
        return self._send(_cert_call("PATCH", fqdn, body={"redirect_http": redirect_http}))

    def delete_cert(self, fqdn: str) -> dict[str, Any]:
        return self._send(_cert_call("DELETE", fqdn))

    def renew_cert(self, fqdn: str) -> dict[str, Any]:
        return self._send(_cert_call("POST", fqdn, "/renew"))

    def ca_certificate(self) -> str:
        return str(self._send(_cert_call("GET", "ca"))["ca"])


class AsyncPceClient(_Base):
    """Asyncio client, the same operations as `PceClient`; `async with` or `await aclose()`."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(urls, token, timeout)
        self._http = httpx.AsyncClient(headers=self._headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncPceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        failures: list[PceUnavailable] = []
        for i in self._order():
            url = self.urls[i]
            try:
                response = await self._http.request(
                    call.method,
                    url + call.path,
                    json=call.body,
                    params=call.params,
                    timeout=call.timeout or self.timeout,
                )
                result = self._read(call, response, url)
            except httpx.HTTPError as exc:
                failures.append(_unreachable(url, exc))
            except PceUnavailable as exc:
                failures.append(exc)
            else:
                self._first = i
                return result
        raise min(failures, key=_usefulness)

    async def health(self) -> dict[str, Any]:
        return await self._send(_health())

    async def topology(self) -> dict[str, Any]:
        return await self._send(_topology())

    async def link_down(self, a: str, b: str) -> dict[str, Any]:
        return await self._send(_link_state(a, b, up=False))

    async def link_up(self, a: str, b: str) -> dict[str, Any]:
        return await self._send(_link_state(a, b, up=True))

    async def update_link(self, a: str, b: str, **changes: float | None) -> dict[str, Any]:
        return await self._send(_update_link(a, b, changes))

    async def registrations(self) -> list[Registration]:
        return await self._send(_registrations())

    async def register(self, endpoint: Endpoint) -> Registration:
        return await self._send(_register(endpoint))

    async def withdraw(self, sfe: str) -> Registration:
        return await self._send(_withdraw(sfe))

    async def delegate(self, name: str, tenant: str) -> Delegation:
        return await self._send(_delegate(name, tenant))

    async def undelegate(self, name: str) -> Delegation:
        return await self._send(_undelegate(name))

    async def policy(self, fqdn: str) -> RoutingPolicy:
        return await self._send(_policy(fqdn))

    async def set_policy(self, policy: RoutingPolicy) -> RoutingPolicy:
        return await self._send(_set_policy(policy))

    async def delete_policy(self, fqdn: str) -> None:
        await self._send(_delete_policy(fqdn))

    async def table(self, sr: str, since: int = 0, wait: float = 0.0) -> TableUpdate:
        return await self._send(_table(sr, since, wait, self.timeout))

    async def routes(self, fqdn: str, from_node: str | None = None) -> list[ForwardingTable]:
        return await self._send(_routes(fqdn, from_node))
