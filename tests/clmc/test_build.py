"""`flame.clmc.build.build_clmc` (issue 18): the CLMC of `flame serve clmc`, built from typed
settings — tokens checked unless there is no token store, the platform's own endpoints never
webhook destinations, alert rules kept in the data directory (CLMC-8, CLMC-16)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from flame.clmc.build import ClmcSettings, build_clmc
from flame.common.auth import Role, TokenStore

RULE = {
    "name": "slow",
    "policy": "scale",
    "event_type": "threshold",
    "measurement": "sr_fqdn",
    "field": "response_time",
    "threshold": 100.0,
    "granularity_s": 0.5,
    "aggregation": "mean",
    "comparison": "gt",
    "tags": [],
}


def _settings(tmp_path: Path, tokens: bool) -> ClmcSettings:
    return ClmcSettings(
        directory=tmp_path / "clmc",
        tokens_path=tmp_path / "tokens.json" if tokens else None,
        own_url="http://127.0.0.1:8086",
        sfemc_url="http://127.0.0.1:7080/v1/sfemc/events",
        platform_urls=("http://127.0.0.1:9443",),
    )


def test_with_tokens_the_built_clmc_checks_them_and_refuses_its_own_endpoints(
    tmp_path: Path,
) -> None:
    warned: list[str] = []
    noted: list[str] = []
    built = build_clmc(_settings(tmp_path, tokens=True), warn=warned.append, note=noted.append)
    (warning,) = warned
    assert warning.startswith(f"no API tokens in {tmp_path / 'tokens.json'}")  # an empty store
    assert noted == [f"alert webhooks: {built.outbound.describe()}"]
    for own in ("127.0.0.1:8086", "127.0.0.1:7080", "127.0.0.1:9443"):
        assert own in noted[0]  # the platform's endpoints: never a webhook
    token = TokenStore(tmp_path / "tokens.json").issue("ops", Role.OPERATOR)
    with TestClient(built.app) as client:
        assert client.get("/ping").status_code == 204
        assert client.get("/query", params={"q": "SHOW DATABASES"}).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        r = client.get("/query", params={"q": "SHOW DATABASES"}, headers=auth)
        assert r.status_code == 200
        assert ["flame"] in r.json()["results"][0]["series"][0]["values"]


def test_without_a_token_store_it_warns_and_keeps_alert_rules_in_its_directory(
    tmp_path: Path,
) -> None:
    warned: list[str] = []
    built = build_clmc(_settings(tmp_path, tokens=False), warn=warned.append, note=print)
    assert warned == [
        "--no-auth: the CLMC takes every request as the operator's; never on a shared network"
    ]
    with TestClient(built.app) as client:
        r = client.put("/v1/alerts/vod/vod-1", json={"tenant": "acme", "rules": [RULE]})
        assert r.status_code < 300, r.text
    saved = json.loads((tmp_path / "clmc" / "alert-rules.json").read_text())
    assert [(s["tenant"], s["sfci"]) for s in saved] == [("acme", "vod-1")]
    assert (tmp_path / "clmc" / "alert-rules.json").stat().st_mode & 0o777 == 0o600
