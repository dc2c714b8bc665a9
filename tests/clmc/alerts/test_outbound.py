"""The operator's outbound policy for alert webhooks (`flame.clmc.alerts.outbound`): what it
refuses and why, the allow and deny lists, `reach`, and delivery against the addresses a name
has at delivery time, connected to the checked address with the name kept as Host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.outbound import (
    Destination,
    OutboundPolicy,
    PinnedTransport,
    Reach,
    WebhookRefused,
)
from flame.clmc.alerts.service import AlertService
from flame.clmc.service import ClmcService
from flame.common.auth import Role, TokenStore
from flame.common.errors import UserError

from .test_service import RULE, Receiver, S, batch


class Dns:
    """A resolver the test controls: name -> addresses, changeable between calls."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError(f"{host}: name or service not known")
        return list(self.answers[host])


def policy(**kw: object) -> OutboundPolicy:
    kw.setdefault("resolver", Dns({}))
    return OutboundPolicy.build(**kw)  # type: ignore[arg-type]


def refused(p: OutboundPolicy, url: str) -> str:
    with pytest.raises(WebhookRefused) as caught:
        p.check(url)
    return caught.value.message


def test_default_policy_refuses_internal_addresses_and_allows_the_rest() -> None:
    dns = Dns(
        {
            "hooks.example": ["192.0.2.10"],
            "evil.example": ["203.0.113.9", "127.0.0.1"],  # one bad address is enough
            "meta.example": ["169.254.169.254"],
            "lan.example": ["10.1.2.3"],
        }
    )
    p = policy(resolver=dns)
    assert "a loopback address" in refused(p, "http://127.0.0.1:9000/x")
    assert "a loopback name" in refused(p, "http://LOCALHOST./x")
    assert "a loopback name" in refused(p, "http://app.localhost/x")
    assert "evil.example resolves to 127.0.0.1" in refused(p, "https://evil.example/hook")
    assert "instance-metadata" in refused(p, "http://meta.example/")
    assert "instance-metadata" in refused(p, "http://169.254.169.254/")
    assert "link-local" in refused(p, "http://169.254.1.1/")
    assert "link-local" in refused(p, "http://[fe80::1]/")
    assert "unspecified" in refused(p, "http://0.0.0.0:8086/")
    assert "unspecified" in refused(p, "http://[::]:8086/")
    assert "unspecified" in refused(p, "http://0.1.2.3/")
    assert "multicast" in refused(p, "http://224.0.0.1/")
    assert "reserved" in refused(p, "http://255.255.255.255/")
    assert "loopback" in refused(p, "http://[::ffff:127.0.0.1]/")  # IPv4-mapped
    assert "loopback" in refused(p, "http://[2002:7f00:1::1]/")  # 6to4 of 127.0.0.1
    assert "the scheme must be http or https" in refused(p, "file:///etc/passwd")
    assert "the scheme must be" in refused(p, "ftp://hooks.example/")
    assert "no host" in refused(p, "http:///x")
    p.check("http://hooks.example:8080/alerts")
    p.check("https://lan.example/")  # private networks: the default reach
    p.check("http://198.51.100.7/")
    # A name that does not resolve now is accepted at PUT: delivery checks it again.
    p.check("http://not-yet.example/")


def test_the_platform_s_own_endpoints_are_refused_even_when_allowed() -> None:
    dns = Dns({"clmc.internal": ["10.0.0.2"]})
    p = policy(
        resolver=dns,
        allow=["10.0.0.0/8"],
        platform_urls=[
            "http://10.0.0.1:7070",
            "http://clmc.internal:8086/",
            "http://[fd00::1]:7080",
        ],
    )
    assert "one of the platform's own endpoints" in refused(p, "http://10.0.0.1:7070/v1/topology")
    assert "one of the platform's own endpoints" in refused(p, "http://10.0.0.2:8086/query")
    assert "one of the platform's own endpoints" in refused(p, "http://clmc.internal:8086/")
    assert "one of the platform's own endpoints" in refused(p, "http://[fd00::1]:7080/")
    p.check("http://10.0.0.1:9000/hook")  # another port of that host: the operator allowed 10/8
    # Without the allow list, the platform's hosts are refused on every port.
    q = policy(resolver=dns, platform_urls=["http://10.0.0.1:7070"])
    assert "a host of the platform" in refused(q, "http://10.0.0.1:5432/")
    q.check("http://10.0.0.3:5432/")


def test_allow_list_exceptions_and_reach() -> None:
    dns = Dns({"hooks.corp": ["10.9.9.9"], "sneaky.corp": ["127.0.0.1"]})
    # An allowed address (with its port) passes even on loopback; the next port does not.
    p = policy(resolver=dns, allow=["127.0.0.1:9999", "[::1]:9999"])
    p.check("http://127.0.0.1:9999/hook")
    p.check("http://[::1]:9999/hook")
    assert "loopback" in refused(p, "http://127.0.0.1:9998/hook")
    # reach=public: private networks too.
    pub = policy(resolver=dns, reach="public")
    assert "not a public address" in refused(pub, "http://10.1.2.3/")
    assert "not a public address" in refused(pub, "http://[fd12::1]/")
    assert "not a public address" in refused(pub, "http://100.64.0.1/")  # carrier-grade NAT
    pub.check("http://8.8.8.8/")
    # A host name allowed lifts the reach for that name, not the refusal of loopback.
    named = policy(resolver=dns, reach="public", allow=["hooks.corp", "sneaky.corp"])
    named.check("http://hooks.corp/")
    assert "loopback" in refused(named, "http://sneaky.corp/")
    # reach=listed: only what the allow list names. A named host still may not resolve to
    # loopback (the name is allowed, not every address it may point to).
    listed = policy(resolver=dns, reach=Reach.LISTED, allow=["*.corp", "192.0.2.0/24"])
    listed.check("http://hooks.corp/alert")
    listed.check("http://192.0.2.44/")
    assert "does not name" in refused(listed, "http://8.8.8.8/")
    assert "loopback" in refused(listed, "http://sneaky.corp/")
    # Only http and https, and only those the operator keeps.
    tls = policy(resolver=dns, schemes=["https"])
    assert "the scheme must be https" in refused(tls, "http://hooks.corp/")
    with pytest.raises(UserError, match="among http, https"):
        policy(schemes=["http", "file"])


def test_destinations_parse_and_print() -> None:
    assert str(Destination.parse("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(Destination.parse("127.0.0.1:8080")) == "127.0.0.1:8080"
    assert str(Destination.parse("[::1]:443")) == "[::1]:443"
    assert str(Destination.parse("2001:db8::/32")) == "2001:db8::/32"
    assert str(Destination.parse("Hooks.Example.org.")) == "hooks.example.org"
    assert str(Destination.parse("*.example.org:443")) == "*.example.org:443"
    for bad in ("", "10.0.0.1:0", "10.0.0.1:http", "[::1", "bad_name!", "*."):
        with pytest.raises(UserError):
            Destination.parse(bad)


@pytest.mark.asyncio
async def test_put_refuses_a_name_resolving_to_loopback_and_names_rule_and_url(
    tmp_path: Path,
) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    acme = {"Authorization": f"Bearer {tokens.issue('acme', Role.TENANT, 'acme')}"}
    dns = Dns({"rebind.example": ["127.0.0.1"], "hooks.example": ["192.0.2.10"]})
    alerts = AlertService(None, Notifier(None, outbound=policy(resolver=dns)), sliding=False)
    clmc = ClmcService(tmp_path / "clmc", tokens, alerts=alerts)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=clmc.app), base_url="http://clmc"
    ) as c:
        good = {**RULE, "name": "fine", "webhooks": ["http://hooks.example/a"]}
        bad = {**RULE, "name": "rebound", "webhooks": ["http://rebind.example:7070/x"]}
        r = await c.put("/v1/alerts/vod/vod-1", json={"rules": [good, bad]}, headers=acme)
        assert r.status_code == 400
        text = r.text
        assert "'rebound'" in text
        assert "http://rebind.example:7070/x" in text
        assert "rebind.example resolves to 127.0.0.1" in text
        assert alerts.engine.rules() == []  # all or nothing
        r = await c.put("/v1/alerts/vod/vod-1", json={"rules": [good]}, headers=acme)
        assert r.status_code == 200, r.text


def fire(service: AlertService) -> None:
    window = service.engine.clock() // S * S
    service.engine.observe("flame", "sr_fqdn", batch(window + 1, 500.0))
    assert len(service.evaluate(window + 3 * S)) == 1


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_delivery_checks_the_address_the_name_has_then(tmp_path: Path) -> None:
    """Allowed at PUT (a documentation address), the name then resolves to loopback, where an
    internal service listens: nothing reaches it. The positive control: the same receiver,
    allowed explicitly, gets the event, through the checked address, with the name as Host
    (hooks.example does not resolve outside this test's resolver)."""
    receiver = Receiver([])
    port = int((await receiver.start()).rsplit(":", 1)[1].split("/", 1)[0])
    hook = f"http://hooks.example:{port}/hook"
    dns = Dns({"hooks.example": ["192.0.2.10"]})
    notifier = Notifier(None, outbound=policy(resolver=dns))
    service = AlertService(None, notifier, sliding=False)
    service.put("acme", "vod", "vod-1", [{**RULE, "notify_sfemc": False, "webhooks": [hook]}])
    dns.answers["hooks.example"] = ["127.0.0.1"]  # the DNS answer changes
    fire(service)
    await notifier.close()
    assert receiver.received == []
    assert (notifier.delivered, notifier.failed, notifier.refused) == (0, 1, 1)

    allowing = Notifier(None, outbound=policy(resolver=dns, allow=[f"127.0.0.1:{port}"]))
    service = AlertService(None, allowing, sliding=False)
    service.put("acme", "vod", "vod-1", [{**RULE, "notify_sfemc": False, "webhooks": [hook]}])
    fire(service)
    await wait_for(lambda: allowing.delivered == 1)
    await allowing.close()
    ((headers, body),) = receiver.received
    assert headers["host"] == f"hooks.example:{port}"
    assert body["id"] == "vod/vod-1/slow"
    await receiver.close()


@pytest.mark.asyncio
async def test_redirects_are_not_followed() -> None:
    class Redirecting(Receiver):
        async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = next(
                int(line.split(":", 1)[1])
                for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            )
            await reader.readexactly(length)
            self.received.append(({}, {"path": head.split(" ")[1]}))
            writer.write(
                b"HTTP/1.1 307 X\r\nLocation: http://127.0.0.1:7070/v1/delegations\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()

    hop = Redirecting([])
    url = await hop.start()
    notifier = Notifier(None, outbound=policy(allow=["127.0.0.1"]))
    service = AlertService(None, notifier, sliding=False)
    service.put("acme", "vod", "vod-1", [{**RULE, "notify_sfemc": False, "webhooks": [url]}])
    fire(service)
    await notifier.close()
    assert [b["path"] for _, b in hop.received] == ["/hook"]  # asked once, never followed
    assert (notifier.delivered, notifier.failed) == (0, 1)
    await hop.close()


@pytest.mark.asyncio
async def test_the_sfemc_target_is_exempt_and_keeps_the_token() -> None:
    sfemc = Receiver([])
    url = await sfemc.start()  # on loopback, as under `flame up`
    notifier = Notifier(url, token="platform-secret")  # the default policy
    service = AlertService(None, notifier, sliding=False)
    service.put("acme", "vod", "vod-1", [RULE])  # flame_sfemc only
    fire(service)
    await wait_for(lambda: notifier.delivered == 1)
    await notifier.close()
    ((headers, _body),) = sfemc.received
    assert headers["authorization"] == "Bearer platform-secret"
    await sfemc.close()


@pytest.mark.asyncio
async def test_pinned_transport_keeps_the_name_for_tls() -> None:
    """For https the checked address is dialled but the TLS server name stays the host name
    (SNI and the certificate check), as the Host header does."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    dns = Dns({"hooks.example": ["192.0.2.10", "192.0.2.11"]})
    transport = PinnedTransport(policy(resolver=dns), inner=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post("https://hooks.example/hook", json={})
        assert r.status_code == 204
        dns.answers["hooks.example"] = ["10.0.0.1", "169.254.169.254"]
        with pytest.raises(WebhookRefused, match="instance-metadata"):
            await client.post("https://hooks.example/hook", json={})
    (request,) = seen
    assert request.url.host == "192.0.2.10"
    assert request.headers["host"] == "hooks.example"
    assert request.extensions["sni_hostname"] == "hooks.example"
