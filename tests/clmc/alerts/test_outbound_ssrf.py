"""Issue 11, finding 4 (second half): a tenant's alert rule may name any webhook, so the CLMC
POSTs wherever the tenant likes (blind SSRF). With the default outbound policy a webhook on a
loopback, link-local, unspecified or metadata address, or on a name for loopback, is refused
when the rule is PUT (400 naming the rule and the URL, nothing stored), and an event is never
delivered to such a webhook, even one stored before the policy (a restarted CLMC's rules).

Written with the interfaces that existed before the fix (a CLMC with alerts, the default
`Notifier`), so that it runs, and fails, on the old code too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.clmc.service import ClmcService
from flame.common.auth import Role, TokenStore

from .test_service import RULE, Receiver, S, batch

pytestmark = pytest.mark.asyncio

REFUSED = [
    "http://127.0.0.1:7070/v1/delegations",  # the PCE of `flame up`
    "http://localhost:8086/query",  # a name for loopback (the system resolver's answer)
    "http://169.254.169.254/latest/meta-data/",  # cloud instance metadata
    "http://[::1]:7080/v1/sfemc/endpoints",
    "http://0.0.0.0:7080/",
    "http://127.1.2.3/",  # all of 127/8 is loopback
    "http://[::ffff:127.0.0.1]/",  # loopback in IPv6 clothing
    "http://[fe80::1]/",  # IPv6 link-local
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_a_rule_with_an_internal_webhook_is_refused_when_put(
    tmp_path: Path, url: str
) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    acme = {"Authorization": f"Bearer {tokens.issue('acme', Role.TENANT, 'acme')}"}
    alerts = AlertService(None, Notifier(None), sliding=False)
    clmc = ClmcService(tmp_path / "clmc", tokens, alerts=alerts)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=clmc.app), base_url="http://clmc"
    ) as c:
        rule = {**RULE, "name": "nosy", "notify_sfemc": False, "webhooks": [url]}
        r = await c.put("/v1/alerts/vod/vod-1", json={"rules": [rule]}, headers=acme)
        assert r.status_code == 400, r.text
        message = json.dumps(r.json())
        assert "nosy" in message  # the rule
        assert json.dumps(url)[1:-1] in message  # and the URL
        assert "refused" in message
        assert (await c.get("/v1/alerts", headers=acme)).json() == []
    assert alerts.engine.rules() == []


async def test_a_stored_rule_with_a_loopback_webhook_is_never_delivered(tmp_path: Path) -> None:
    """Rules stored by an older CLMC come back at start-up; their internal webhooks stay
    unreachable: the check runs again at every delivery."""
    victim = Receiver([])
    url = await victim.start()  # an internal service on loopback
    rules = tmp_path / "rules.json"
    rule = {**RULE, "notify_sfemc": False, "webhooks": [url]}
    rules.write_text(
        json.dumps(
            [
                {
                    "tenant": "acme",
                    "sfc": "vod",
                    "sfci": "vod-1",
                    "rules": [rule],
                    "database": "flame",
                }
            ]
        )
    )
    notifier = Notifier(None)
    service = AlertService(rules, notifier, sliding=False)
    assert [k.name for k, _, _ in service.engine.rules()] == ["slow"]  # kept: the rule itself
    window = service.engine.clock() // S * S
    service.engine.observe("flame", "sr_fqdn", batch(window + 1, 500.0))
    assert len(service.evaluate(window + 3 * S)) == 1
    await notifier.close()
    await asyncio.sleep(0.1)
    assert victim.received == []
    assert notifier.delivered == 0
    assert notifier.failed == 1
    await victim.close()
