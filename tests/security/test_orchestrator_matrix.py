"""Issue 11: the orchestrator's (and SFEMC's) authorization matrix, every route × every caller.

Tenant A (acme) has the VoD service deployed; tenant B (globex) must not see, change, delete or
read the logs of it, and a router token must not act on any service (finding 2: it undeployed
another tenant's service with 202).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.common.auth import Role, TokenStore
from flame.orchestrator.api import create_app
from flame.orchestrator.service import Orchestrator
from orchestrator.harness import VOD, Platform

from .matrix import CALLERS, DOC_ROWS, PUBLIC_ROW, assert_covers, headers, row

pytestmark = pytest.mark.asyncio

SFE = "vod-1.origin.metro-london"
TEMPLATE = {"template": VOD.read_text(), "name": "service.yaml"}

# (method, route path) -> (the concrete path, a JSON body or None, the expected row)
CASES: dict[tuple[str, str], tuple[str, Any, dict[str, int]]] = {
    ("GET", "/health"): ("/health", None, PUBLIC_ROW),
    ("GET", "/v1/whoami"): ("/v1/whoami", None, row(a=200, router=200)),
    # An empty body passes the gate and fails as a request: 400 for whoever may submit.
    ("POST", "/v1/services"): ("/v1/services", {}, row(a=400)),
    # B may plan, but learns only that the name is taken, nothing of A's endpoints.
    ("POST", "/v1/services/{sfc}/plan"): ("/v1/services/vod/plan", TEMPLATE, row(a=200)),
    ("GET", "/v1/services"): ("/v1/services", None, row(a=200)),
    ("GET", "/v1/services/{sfc}"): ("/v1/services/vod", None, row(a=200, b=404)),
    ("DELETE", "/v1/services/{sfc}"): ("/v1/services/vod", None, row(a=202, b=404)),
    ("GET", "/v1/endpoints/{sfe}/logs"): (f"/v1/endpoints/{SFE}/logs", None, row(a=200, b=404)),
    ("POST", "/v1/sfemc/events"): (
        "/v1/sfemc/events",
        {"id": "m-1", "alert": "nothing", "sfc": "vod", "time": 1},
        row(a=403, operator=200),
    ),
    ("GET", "/v1/sfemc/endpoints"): ("/v1/sfemc/endpoints", None, row(a=403, operator=200)),
    # The image repository (issue 13): archives for cluster agents, operator only; tenants push,
    # list and delete their own. This platform has no repository, so whoever passes the gate
    # finds nothing (404); a push without its digest is refused first (422).
    ("GET", "/v1/images"): ("/v1/images", None, row(a=404)),
    ("POST", "/v1/images"): ("/v1/images", None, row(a=422)),
    ("DELETE", "/v1/images/{digest}"): ("/v1/images/sha256:" + "0" * 64, None, row(a=404)),
    ("GET", "/v1/images/{digest}"): (
        "/v1/images/sha256:" + "0" * 64,
        None,
        row(a=403, operator=404),
    ),
    **{key: (key[1], None, expected) for key, expected in DOC_ROWS.items()},
}


async def test_every_orchestrator_route_answers_each_caller_as_its_rule_says(
    platform: Platform, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    tokens = {
        "tenant_a": platform.acme,
        "tenant_b": platform.globex,
        "router": store.issue("sr-ue-1", Role.ROUTER),
        "operator": platform.operator,
    }
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        await deployed(http, platform.acme, platform)
    app = create_app(Orchestrator(platform.sfemc, platform.alerts), store, manage_sfemc=False)
    assert_covers(app, {key: case[2] for key, case in CASES.items()})
    got: dict[tuple[str, str], dict[str, int]] = {}
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        for key, (path, body, _) in CASES.items():
            await deployed(http, tokens["tenant_a"], platform)  # again after the DELETE row
            got[key] = {}
            for caller in CALLERS:
                if key[0] == "DELETE" and caller in ("tenant_a", "operator"):
                    await deployed(http, tokens["tenant_a"], platform)
                params = {"tenant": "acme"} if caller == "operator" and "plan" in path else None
                response = await http.request(
                    key[0], path, json=body, params=params, headers=headers(caller, tokens)
                )
                got[key][caller] = response.status_code
                if response.status_code >= 400:
                    assert response.json()["error"], response.text  # JSON errors, always
                if key == ("GET", "/v1/services") and caller == "tenant_b":
                    assert response.json() == {"services": []}  # A's service is invisible
                if key[1].endswith("/plan") and caller == "tenant_b":
                    plan = response.json()
                    assert [e["code"] for e in plan["errors"]] == ["sfc_taken"]
                    assert plan["add"] == plan["change"] == plan["remove"] == []
            if key == ("GET", "/v1/whoami"):
                assert response.json() == {"name": "ops", "role": "operator", "tenant": None}
    assert got == {key: case[2] for key, case in CASES.items()}


async def deployed(http: httpx.AsyncClient, token: str, platform: Platform) -> None:
    """Tenant A's VoD service, deployed and settled (again, after a delete)."""
    head = {"Authorization": f"Bearer {token}"}
    for _ in range(100):
        r = await http.post("/v1/services", json=TEMPLATE, headers=head)
        if r.status_code in (200, 202):
            break
        await platform.settle()  # a removal still in progress: 409 until it is done
    assert r.status_code in (200, 202), r.text
    await platform.settle()
