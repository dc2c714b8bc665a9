"""Policy triggers (SFEMC-3/4): alert events -> desired states, with every decision explained."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from flame.sfemc.build import SfemcParts, SfemcSettings, build_sfemc
from flame.sfemc.control import Sfemc
from flame.sfemc.events import ALERT_TOPIC, DECISION_TOPIC, AlertEvent, DecisionEvent, InProcessBus
from flame.sfemc.registrar import InProcessRegistrar
from flame.topology.loader import load_topology
from flame.tosca import load_service

from .fakes import FakeVim
from .helpers import Recorder

ROOT = Path(__file__).resolve().parents[2]
SANDPIT = ROOT / "examples" / "topology" / "sandpit.yaml"
VOD = ROOT / "examples" / "vod-edge-cache" / "service.yaml"
BRISTOL = "vod-1.cache.edge-bristol"


@pytest_asyncio.fixture
async def sfemc(tmp_path: Path) -> AsyncIterator[Sfemc]:
    topology = load_topology(SANDPIT)
    vim = FakeVim()
    s = build_sfemc(  # as `flame serve orchestrator` builds it, over an in-memory VIM
        SfemcSettings(state_dir=tmp_path, db=str(tmp_path / "s.db"), drain_s=0, resync_s=0),
        topology,
        InProcessBus(),
        parts=SfemcParts(
            dict.fromkeys(topology.clusters, vim),
            InProcessRegistrar({"vod.flame.example": "acme"}),
        ),
    ).sfemc
    await s.start()
    s.apply("acme", load_service([VOD], topology=topology), {"service.yaml": VOD.read_text()})
    await s.reconciler.wait_idle(5)
    yield s
    await s.stop()
    s.store.close()


def alert(id: str, name: str = "slow_at_bristol", t: float = 100.0, **kw: object) -> AlertEvent:
    values: dict[str, object] = {"sfc": "vod", "sfci": "vod-1", "level": "critical"}
    values.update(kw)
    return AlertEvent(id, name, time=t, **values)  # type: ignore[arg-type]


def state(s: Sfemc, sfe: str = BRISTOL) -> str:
    record = s.store.endpoint(sfe)
    assert record is not None
    return record.state.value


@pytest.mark.asyncio
async def test_bus_alert_fires_the_policy_and_decisions_are_published(sfemc: Sfemc) -> None:
    decisions = Recorder(sfemc.bus, DECISION_TOPIC)  # type: ignore[arg-type]
    assert state(sfemc) == "booted"
    sfemc.bus.publish(ALERT_TOPIC, alert("a1"))
    await sfemc.reconciler.wait_idle(5)
    assert state(sfemc) == "connected"
    [decision] = decisions.events
    assert isinstance(decision, DecisionEvent)
    assert decision.decision == "applied"
    assert (
        decision.reason
        == "policy scale_to_edge/slow_at_bristol fired by alert 'slow_at_bristol' (critical)"
    )
    assert decision.changes == (f"{BRISTOL}: connected",)


@pytest.mark.asyncio
async def test_duplicates_and_late_events_are_ignored_with_reasons(sfemc: Sfemc) -> None:
    assert sfemc.handle_alert(alert("a1", t=100)).decision == "applied"
    assert sfemc.handle_alert(alert("a2", "quiet_at_bristol", t=101)).decision == "applied"
    dup = sfemc.handle_alert(alert("a1", t=100))
    assert (dup.decision, dup.reason) == ("ignored", "duplicate: event id 'a1' was already handled")
    late = sfemc.handle_alert(alert("a0", t=99))
    assert late.decision == "ignored"
    assert late.reason.startswith(
        "out of order: older than the last applied event for scale_to_edge/slow_at_bristol"
    )
    await sfemc.reconciler.wait_idle(5)
    assert state(sfemc) == "booted"  # the newest decision (quiet) stands
    # A redelivered late event is a duplicate now, not re-evaluated.
    assert sfemc.handle_alert(alert("a0", t=99)).reason.startswith("duplicate")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (alert("x1", sfc="nope"), "no deployed service function chain 'nope'"),
        (
            alert("x2", sfci="vod-9"),
            "instance 'vod-9' is not deployed; chain 'vod' runs instance 'vod-1'",
        ),
        (alert("x3", level="ok"), "level 'ok' is not a firing level"),
        (
            alert("x4", "unknown"),
            "no state-change policy of 'vod' is triggered by alert 'unknown'; alerts with policies: quiet_at_bristol, slow_at_bristol",
        ),
    ],
)
async def test_unmatched_events_say_why(sfemc: Sfemc, event: AlertEvent, reason: str) -> None:
    decision = sfemc.handle_alert(event)
    assert decision.decision == "ignored"
    assert decision.reason.startswith(reason)
    assert sfemc.store.alert_seen(event.id)
    assert state(sfemc) == "booted"
