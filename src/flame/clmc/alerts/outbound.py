"""Where the CLMC may send alert events: the operator's outbound policy for webhooks.

A tenant names its webhooks in its service template, so without a policy the CLMC would POST
to any address the tenant likes: its own loopback services, the cloud's metadata service, the
platform's control APIs (a blind SSRF). :class:`OutboundPolicy` decides, for one URL:

1. the scheme must be one the operator allows (`http` and/or `https`; nothing else, ever);
2. the host is resolved and **every** address is checked; the connection then goes to a
   checked address, never to the name again (:class:`PinnedTransport`), so a DNS answer that
   changes between the check and the connect cannot send it elsewhere;
3. an address (with the port) in the deny list is refused whatever else says: the platform's
   own endpoints (PCE, orchestrator/SFEMC, CLMC, SRs, dashboard) are always in it;
4. an address in the allow list is accepted (the operator named it); a host name in it lifts
   the limits of ``reach`` for that name, not the refusals below (to allow a loopback or
   link-local receiver, name its address);
5. otherwise, by ``reach``: ``listed`` refuses everything not allowed; ``private`` (the
   default) and ``public`` refuse loopback, link-local (169.254/16 with the cloud metadata
   address, fe80::/10), unspecified and "this network" (0/8, ::), multicast, reserved and
   broadcast addresses, known metadata addresses and the platform's own hosts on any port;
   ``public`` also refuses every address that is not globally routable (10/8, 172.16/12,
   192.168/16, 100.64/10, fc00::/7, ...).

The policy is checked when a rule is stored (``PUT /v1/alerts/...`` answers 400 naming the
rule and the URL) and again at each delivery, against the addresses the name has then.
Redirects are never followed. The SFEMC's own event webhook is configured by the operator and
is exempt (it is the platform's, and it gets the platform's token).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from flame.common.errors import UserError

__all__ = [
    "Destination",
    "OutboundPolicy",
    "PinnedTransport",
    "Reach",
    "Resolver",
    "WebhookRefused",
    "system_resolver",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], list[str]]
"""(host name, port) -> the addresses it resolves to, as text; raises OSError when it does not."""

ALLOWED_SCHEMES = frozenset({"http", "https"})  # never file:, ftp:, gopher:, ...
_DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookRefused(UserError, ValueError):
    """A webhook URL the operator's outbound policy refuses (400 when a rule is stored)."""

    code = "webhook_refused"


class Reach(enum.StrEnum):
    PRIVATE = "private"  # public and private networks; never loopback, link-local, ...
    PUBLIC = "public"  # globally routable addresses only
    LISTED = "listed"  # only what the allow list names


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen[str(sockaddr[0]).split("%", 1)[0]] = None  # no IPv6 zone ids
    return list(seen)


@dataclass(frozen=True, slots=True)
class Destination:
    """An allow- or deny-list entry: an address, a network or a host name (``*.example.org``
    for any name under it), with or without a port.

    Written ``10.0.0.0/8``, ``192.0.2.7:8080``, ``[2001:db8::1]:443``, ``2001:db8::/32``,
    ``hooks.example.org``, ``*.example.org:443``.
    """

    network: IPNetwork | None = None
    name: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Destination:
        entry = text.strip()
        if not entry:
            raise UserError("an empty outbound destination")
        host, port = entry, None
        if entry.startswith("["):
            inside, bracket, rest = entry[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise UserError(f"outbound destination {text!r}: write [IPv6]:port")
            host, port = inside, _port(rest[1:], text) if rest else None
        elif entry.count(":") == 1:
            host, _, number = entry.partition(":")
            port = _port(number, text)
        try:
            return cls(network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError:
            pass
        name = _normal_name(host)
        label = name[2:] if name.startswith("*.") else name
        if not label or any(
            not part or not all(c.isalnum() or c == "-" for c in part) for part in label.split(".")
        ):
            raise UserError(
                f"outbound destination {text!r}: not an address, a network (CIDR) or a host name"
            )
        return cls(name=name, port=port)

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return address.version == self.network.version and address in self.network

    def matches_name(self, name: str, port: int) -> bool:
        if self.name is None or (self.port is not None and self.port != port):
            return False
        if self.name.startswith("*."):
            return name.endswith(self.name[1:])
        return name == self.name

    def __str__(self) -> str:
        host = str(self.network) if self.network is not None else str(self.name)
        if self.network is not None and self.network.num_addresses == 1:
            host = str(self.network.network_address)
        if self.port is None:
            return host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UserError(f"outbound destination {entry!r}: the port must be 1..65535")
    return int(text)


def _normal_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), where it reaches it."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# Instance metadata services outside link-local: AWS over IPv6, Alibaba Cloud.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "169.254.169.254")
)


def _category(address: IPAddress) -> str | None:
    """Why an address is refused by default (None: it is not)."""
    if address in _METADATA:
        return "a cloud instance-metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified or (address.version == 4 and address in _THIS_NETWORK):
        return "an unspecified ('this host') address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255"):
        return "a reserved address"
    return None


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The operator's rules for the CLMC's outbound webhook calls (see the module's doc)."""

    schemes: frozenset[str] = ALLOWED_SCHEMES
    reach: Reach = Reach.PRIVATE
    allow: tuple[Destination, ...] = ()
    deny: tuple[Destination, ...] = ()  # always refused: the platform's own endpoints
    platform_hosts: tuple[Destination, ...] = ()  # refused on any port unless allowed
    resolver: Resolver = field(default=system_resolver, compare=False)
    resolve_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        unknown = set(self.schemes) - ALLOWED_SCHEMES
        if unknown or not self.schemes:
            raise UserError(
                f"webhook schemes must be among http, https (not {', '.join(sorted(unknown))})"
                if unknown
                else "allow at least one webhook scheme (http or https)"
            )

    @classmethod
    def build(
        cls,
        *,
        schemes: Iterable[str] = ALLOWED_SCHEMES,
        reach: Reach | str = Reach.PRIVATE,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        platform_urls: Iterable[str] = (),
        resolver: Resolver = system_resolver,
    ) -> OutboundPolicy:
        """A policy from the operator's options; `platform_urls` are the platform's own
        endpoints (refused always) whose hosts are refused on any port unless allowed."""
        denied = [Destination.parse(d) for d in deny]
        hosts: list[Destination] = []
        for url in platform_urls:
            found = _platform_destinations(url, resolver)
            denied += found
            hosts += [Destination(network=d.network, name=d.name) for d in found]
        return cls(
            schemes=frozenset(s.lower() for s in schemes),
            reach=Reach(reach),
            allow=tuple(Destination.parse(a) for a in allow),
            deny=tuple(dict.fromkeys(denied)),
            platform_hosts=tuple(dict.fromkeys(hosts)),
            resolver=resolver,
        )

    # -- the checks -------------------------------------------------------------------------------

    def check(self, url: str, *, resolve: bool = True) -> None:
        """Raise :class:`WebhookRefused` if `url` may not be called (when a rule is stored).

        A name that does not resolve now is accepted (it is checked again at each delivery,
        and a deployment must not fail because DNS is briefly away); with ``resolve=False``
        only what needs no DNS is checked.
        """
        _scheme, host, port = self._split(url)
        literal = _literal(host)
        if literal is not None:
            self._judge(url, host, port, [literal])
            return
        self._judge_name(url, host, port)
        if not resolve:
            return
        try:
            addresses = _bounded(self.resolver, host, port, self.resolve_timeout_s)
        except (OSError, TimeoutError, UnicodeError) as exc:
            log.warning(
                "webhook %s: %s does not resolve now (%s); checked at delivery", url, host, exc
            )
            return
        self._judge(url, host, port, addresses)

    async def addresses(self, url: str) -> list[IPAddress]:
        """The checked addresses to connect to for `url` (at delivery); raises
        :class:`WebhookRefused` when any address of the name is refused or none is known."""
        _scheme, host, port = self._split(url)
        literal = _literal(host)
        if literal is not None:
            return self._judge(url, host, port, [literal])
        self._judge_name(url, host, port)
        try:
            found = await asyncio.wait_for(
                asyncio.to_thread(self.resolver, host, port), self.resolve_timeout_s
            )
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise WebhookRefused(f"webhook {url!r}: {host} does not resolve ({exc})") from None
        return self._judge(url, host, port, _addresses(found, url))

    def _split(self, url: str) -> tuple[str, str, int]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebhookRefused(f"webhook {url!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = " or ".join(sorted(self.schemes))
            raise WebhookRefused(
                f"webhook {url!r} refused: the scheme must be {allowed} (the CLMC's outbound "
                "policy)"
            )
        host = _normal_name(parts.hostname or "")
        if not host:
            raise WebhookRefused(f"webhook {url!r} has no host")
        return scheme, host, port or _DEFAULT_PORTS[scheme]

    def _judge_name(self, url: str, name: str, port: int) -> None:
        if name == "localhost" or name.endswith(".localhost"):
            raise self._refused(url, f"{name} is a loopback name")
        for entry in self.deny:
            if entry.matches_name(name, port):
                raise self._refused(url, f"{name}:{port} {_DENIED}")

    def _judge(self, url: str, host: str, port: int, found: Iterable[object]) -> list[IPAddress]:
        addresses = _addresses(found, url)
        if not addresses:
            raise WebhookRefused(f"webhook {url!r}: {host} has no address")
        name_allowed = _literal(host) is None and any(
            entry.matches_name(host, port) for entry in self.allow
        )
        for address in addresses:
            reason = self._refusal(address, port, name_allowed)
            if reason is not None:
                where = host if _literal(host) == address else f"{host} resolves to {address}"
                raise self._refused(url, f"{where}, {reason}")
        return addresses

    def _refusal(self, address: IPAddress, port: int, name_allowed: bool) -> str | None:
        embedded = _embedded_v4(address)  # judged first: where the packets would go
        candidates = [address] if embedded is None else [embedded, address]
        for candidate in candidates:
            for entry in self.deny:
                if entry.matches_address(candidate, port):
                    return f"{_at(candidate, port)} {_DENIED}"
        if any(entry.matches_address(address, port) for entry in self.allow):
            return None  # the operator named this address
        if self.reach is Reach.LISTED and not name_allowed:
            return "which the operator's allow list does not name"
        for candidate in candidates:
            why = _category(candidate)
            if why is None and any(
                entry.matches_address(candidate, port) for entry in self.platform_hosts
            ):
                why = "a host of the platform"
            if (
                why is None
                and self.reach is Reach.PUBLIC
                and not name_allowed
                and not candidate.is_global
            ):
                why = "not a public address"
            if why is not None:
                return f"{_at(candidate, port)} is {why}"
        return None

    def _refused(self, url: str, reason: str) -> WebhookRefused:
        return WebhookRefused(
            f"webhook {url!r} refused: {reason} (the CLMC's outbound policy; the operator may "
            "allow a destination with 'flame serve clmc --webhook-allow')"
        )

    def describe(self) -> str:
        parts = [f"schemes {','.join(sorted(self.schemes))}", f"reach {self.reach.value}"]
        if self.allow:
            parts.append("allow " + ", ".join(map(str, self.allow)))
        if self.deny:
            parts.append("deny " + ", ".join(map(str, self.deny)))
        return "; ".join(parts)


_DENIED = "is one of the platform's own endpoints (or in the operator's deny list)"


def _at(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _addresses(found: Iterable[object], url: str) -> list[IPAddress]:
    out: list[IPAddress] = []
    for item in found:
        if isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_address(str(item).split("%", 1)[0]))
        except ValueError:
            raise WebhookRefused(f"webhook {url!r}: the resolver answered {item!r}") from None
    return out


_RESOLVING = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="flame-dns")


def _bounded(resolver: Resolver, host: str, port: int, timeout_s: float) -> list[str]:
    """`resolver(host, port)`, giving up after `timeout_s` (a PUT must not hang on DNS)."""
    future = _RESOLVING.submit(resolver, host, port)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"no answer in {timeout_s:g}s") from None


def _platform_destinations(url: str, resolver: Resolver) -> list[Destination]:
    """The deny-list entries of one platform endpoint: its address(es) with the port."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = _normal_name(parts.hostname or "")
    if not host:
        return []
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    literal = _literal(host)
    if literal is not None:
        if literal.is_unspecified:  # listening on every address: this machine's addresses
            return [
                Destination(network=ipaddress.ip_network(a), port=port)
                for a in _this_machine(resolver)
            ]
        return [Destination(network=ipaddress.ip_network(literal), port=port)]
    found = [Destination(name=host, port=port)]
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError):
        addresses = []
    for address in addresses:
        ip = _literal(str(address))
        if ip is not None:
            found.append(Destination(network=ipaddress.ip_network(ip), port=port))
    return found


def _this_machine(resolver: Resolver) -> list[str]:
    addresses = ["127.0.0.1", "::1"]
    with contextlib.suppress(OSError, UnicodeError):
        addresses += resolver(socket.gethostname(), 0)
    return list(dict.fromkeys(addresses))


class PinnedTransport(httpx.AsyncBaseTransport):
    """Checks every request against the policy and connects to the checked address.

    The URL's host is replaced by the address that passed; the `Host` header keeps the name
    (httpx set it when the request was built), and for https the TLS server name (SNI and the
    certificate check) stays the name too. Connections are not kept alive, so a connection
    opened for one name is never reused for another on the same address.
    """

    def __init__(
        self, policy: OutboundPolicy, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.policy = policy
        self._inner = inner or httpx.AsyncHTTPTransport(
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        addresses = await self.policy.addresses(url)
        extensions = dict(request.extensions)
        if request.url.scheme == "https" and _literal(request.url.host) is None:
            extensions.setdefault("sni_hostname", request.url.host)
        failure: httpx.TransportError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # with the original Host
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:
                failure = exc  # the next checked address, as a resolver-following client would
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()
