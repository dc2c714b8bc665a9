"""A tenant's dashboard in headless Chromium (issue 11): on a FLAME-in-a-box with two tenants,
each with a service, an FQDN, alert rules and KPI points in the platform database, tenant A's
page says who is signed in and shows A's services, FQDN, KPI series and alerts, and not one
string of tenant B's; B's page the other way round; the operator's page shows both (the
positive control: B's data is there to leak). A bad token gets an error and the sign-in form,
no data.

The KPIs come from the CLMC's platform database `flame`, which a tenant reads narrowed to the
rows of its own FQDNs (the CLMC's row scoping, from the PCE's delegations)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventually import Fatal, eventually
from flame.common.auth import Role, TokenStore
from flame.sandbox.demo import DEMO_FQDN, demo_template

from .browser import chromium, render, screenshot
from .test_dashboard_browser import running
from .test_up import env, flame  # noqa: F401 - the env fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]

B_TENANT = "globex"
B_FQDN = "news.globex.example"
B_SFC = "news"
B_SFCI = "news-globex"
B_ALERT = "news_slow_at_bristol"
# Strings only tenant B's data has: none may appear on tenant A's page.
B_STRINGS = (B_TENANT, B_FQDN, B_SFCI, B_ALERT, "news_quiet_at_bristol")
A_STRINGS = ("vod.flame.example", "vod-demo", "vod_slow_at_bristol")


def b_template() -> str:
    """The demo service, renamed for tenant B."""
    text = demo_template()
    for old, new in (
        (DEMO_FQDN, B_FQDN),
        ("servicefunctionchain: vod", f"servicefunctionchain: {B_SFC}"),
        ("sfc_instance: vod-demo", f"sfc_instance: {B_SFCI}"),
        ("template_name: vod", f"template_name: {B_SFC}"),
        ("vod_slow_at_bristol", B_ALERT),
        ("vod_quiet_at_bristol", "news_quiet_at_bristol"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def deploy_b(summary: dict[str, Any], operator: str, token: str) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        delegated = http.put(
            f"{summary['pce_url']}/v1/delegations/{B_FQDN}",
            json={"tenant": B_TENANT},
            headers={"Authorization": f"Bearer {operator}"},
        )
        assert delegated.status_code < 300, delegated.text
        as_b = {"Authorization": f"Bearer {token}"}

        def submit() -> httpx.Response:
            return http.post(
                f"{summary['orchestrator_url']}/v1/services",
                json={"template": b_template(), "name": "service.yaml"},
                headers=as_b,
            )

        # the orchestrator may hold the PCE's delegations for a moment (a cache)
        submitted = eventually(
            submit,
            until=lambda r: r.status_code != 409 or "not delegated" not in r.text,
            every=0.5,
            what="the orchestrator to see B's delegation",
        )
        assert submitted.status_code in (200, 202), submitted.text

        def status() -> dict[str, Any]:
            got = http.get(f"{summary['orchestrator_url']}/v1/services/{B_SFC}", headers=as_b)
            if got.status_code != 200:
                raise Fatal(got.text)
            return dict(got.json())

        eventually(status, until=lambda s: bool(s.get("settled")), timeout=90, every=0.3,
                   what="B's service to settle")  # fmt: skip


def write_kpis(summary: dict[str, Any], operator: str) -> None:
    """The last 30 s of KPIs at sr-ue-1 for both FQDNs, as the SRs report them."""
    now = time.time_ns() // 1_000_000_000 * 1_000_000_000
    lines = [
        f"sr_fqdn,sr=sr-ue-1,fqdn={fqdn},worker=9 requests=5i,response_time={rt},"
        f"path_latency={rt} {now - s * 10**9}"
        for fqdn, rt in ((DEMO_FQDN, 12.5), (B_FQDN, 31.0))
        for s in range(30)
    ]
    written = httpx.post(
        f"{summary['clmc_url']}/write",
        params={"db": "flame"},
        content="\n".join(lines),
        headers={"Authorization": f"Bearer {operator}"},
        timeout=30,
        trust_env=False,
    )
    assert written.status_code == 204, written.text


def page(summary: dict[str, Any], token: str, profile: Path) -> str:
    write_kpis(summary, summary["tokens"]["flame-up-operator"])  # fresh: the chart shows 2 min
    return render(f"{summary['dashboard_url']}/#token={token}", profile, budget_ms=5000)


def series_of(dom: str) -> set[str]:
    return set(re.findall(r'<polyline [^>]*data-series="([^"]+)"', dom))


def whoami(dom: str) -> str:
    found = re.search(r'data-testid="whoami">([^<]*)<', dom)
    return found.group(1) if found else ""


def test_a_tenant_s_dashboard_shows_its_own_and_nothing_of_another(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    with running(env) as summary:
        operator = summary["tokens"]["flame-up-operator"]  # type: ignore[index]
        a_token = summary["tokens"]["flame-up-demo"]  # type: ignore[index]  # tenant "demo"
        b_token = TokenStore(Path(env["FLAME_STATE_DIR"]) / "tokens.json").issue(
            "globex-bot", Role.TENANT, B_TENANT
        )
        deploy_b(summary, operator, b_token)

        # The operator sees both tenants: B's data is there to be leaked.
        ops = page(summary, operator, tmp_path / "ops")
        assert whoami(ops) == "operator (flame-up-operator)"
        assert {f"{DEMO_FQDN} @ sr-ue-1", f"{B_FQDN} @ sr-ue-1"} <= series_of(ops)
        for text in (*A_STRINGS, *B_STRINGS):
            assert text in ops, text

        # Tenant A: its own services, FQDN, KPI series and alerts, and nothing of B's.
        mine = page(summary, a_token, tmp_path / "a")
        assert whoami(mine) == "tenant demo (flame-up-demo)"
        assert f"{DEMO_FQDN} @ sr-ue-1" in series_of(mine), "no KPI series of A's FQDN"
        assert 'data-testid="kpi-unavailable"' not in mine
        assert 'data-endpoint="vod-demo.origin.metro-london"' in mine
        for text in A_STRINGS:
            assert text in mine, text
        for text in B_STRINGS:
            assert text not in mine, f"tenant A's dashboard shows {text!r} of tenant B"
        assert "updated " in mine
        screenshot(
            f"{summary['dashboard_url']}/#token={a_token}", tmp_path / "a2", "dashboard-tenant.png"
        )

        # Tenant B: the same the other way round.
        theirs = page(summary, b_token, tmp_path / "b")
        assert whoami(theirs) == "tenant globex (globex-bot)"
        assert f"{B_FQDN} @ sr-ue-1" in series_of(theirs)
        assert B_ALERT in theirs
        for text in A_STRINGS:
            assert text not in theirs, f"tenant B's dashboard shows {text!r} of tenant A"

        # A bad token: an error and the sign-in form, no data at all.
        bad = page(summary, "flm_" + "A" * 43, tmp_path / "bad")
        errors = re.search(r'data-testid="errors">([^<]*)<', bad)
        assert errors is not None
        assert "token" in errors.group(1).lower()
        assert 'id="login" hidden' not in bad
        assert "data-node=" not in bad
        assert "data-series=" not in bad
        for text in (*A_STRINGS, *B_STRINGS):
            assert text not in bad, text
