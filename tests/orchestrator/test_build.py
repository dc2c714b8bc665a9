"""The orchestrator's factory (issue 18), which `flame serve orchestrator` and the test harness
both use: settings in, the app out. A CLMC in the settings gets the service's alert rules over
HTTP (ORCH-8); without one they stay in this process, and the factory never picks that alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.orchestrator.alerts import InProcessAlertSink
from flame.orchestrator.build import OrchestratorSettings, build_orchestrator
from flame.orchestrator.clmc_sink import HttpAlertSink
from flame.sfemc.build import SfemcParts, SfemcSettings
from flame.sfemc.registrar import InProcessRegistrar
from sfemc.fakes import FakeVim

from .conftest import CLUSTERS
from .harness import SANDPIT, VOD
from .test_clmc_sink import clmc, wait_for


def _parts() -> SfemcParts:
    return SfemcParts(
        dict.fromkeys(CLUSTERS, FakeVim()), InProcessRegistrar({"vod.flame.example": "acme"})
    )


def _sfemc(tmp: Path) -> SfemcSettings:
    return SfemcSettings(state_dir=tmp, drain_s=0, resync_s=0)


def test_the_clmc_is_never_left_out_by_default(tmp_path: Path) -> None:
    """Issue 18 item 5: no CLMC must be said (clmc_url=None), never a silent default."""
    with pytest.raises(TypeError, match="clmc_url"):
        OrchestratorSettings(topology_path=SANDPIT, sfemc=_sfemc(tmp_path))  # type: ignore[call-arg]


def test_without_a_clmc_rules_stay_in_this_process_and_it_says_what_it_runs(
    tmp_path: Path,
) -> None:
    heard: list[str] = []
    built = build_orchestrator(
        OrchestratorSettings(topology_path=SANDPIT, sfemc=_sfemc(tmp_path), clmc_url=None),
        warn=heard.append,
        parts=_parts(),
    )
    try:
        assert isinstance(built.alerts, InProcessAlertSink)
        assert built.describe() == ("topology 'sandpit', store sqlite, registrar in-process")
        assert heard == [  # an empty token store: every request would get 401
            f"no API tokens in {tmp_path / 'tokens.json'}; every request will get 401. "
            "Issue one with 'flame token issue NAME --operator'."
        ]
        assert (tmp_path / "sfemc.sqlite3").exists()  # the default store under state_dir
    finally:
        asyncio.run(built.close())


def test_rules_go_to_the_clmc_the_settings_name(tmp_path: Path) -> None:
    """ORCH-8 through the factory: a deployed service's alert rules reach the CLMC's API."""
    tokens = TokenStore(tmp_path / "tokens.json")
    operator = tokens.issue("orchestrator", Role.OPERATOR)
    acme = tokens.issue("acme", Role.TENANT, "acme")
    with clmc(free_port(), tokens, AlertService(None, Notifier(None))) as url:
        built = build_orchestrator(
            OrchestratorSettings(
                topology_path=SANDPIT,
                sfemc=_sfemc(tmp_path),
                clmc_url=url,
                token=operator,
                metrics_interval_s=0,
            ),
            warn=pytest.fail,
            parts=_parts(),
        )
        assert isinstance(built.alerts, HttpAlertSink)
        with TestClient(built.app) as client:  # runs the lifespan: SFEMC started, then closed
            r = client.post(
                "/v1/services",
                json={"template": VOD.read_text(), "name": "service.yaml"},
                headers={"Authorization": f"Bearer {acme}"},
            )
            assert r.status_code == 202, r.text

            def rules() -> list[str]:
                answer = httpx.get(
                    url + "/v1/alerts", headers={"Authorization": f"Bearer {operator}"}
                )
                return sorted(rule["name"] for rule in answer.json() if rule["sfc"] == "vod")

            wait_for(lambda: rules() == ["quiet_at_bristol", "slow_at_bristol"], timeout=20)
