"""Alert events from the CLMC to the SFEMC over a real NATS server: what the alert service
publishes is what the SFEMC's subscription hands to its policy triggers; malformed events are
dropped, not fatal."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from common.test_nats_events import NATS_SERVER, Broker
from eventually import eventually_async
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.common.nats_events import NatsEvents
from flame.common.ports import free_port
from flame.sfemc.events import AlertEvent
from flame.sfemc.nats_alerts import subscribe_alerts

pytestmark = pytest.mark.skipif(
    not Path(NATS_SERVER).exists(),
    reason="Debian's nats-server is not installed (.ci/run installs it)",
)
S = 1_000_000_000

RULE = {
    "name": "slow",
    "policy": "scale",
    "event_type": "threshold",
    "measurement": "sr_fqdn",
    "field": "response_time",
    "threshold": 100.0,
    "granularity_s": 1.0,
    "aggregation": "mean",
    "comparison": "gt",
    "tags": [["fqdn", "vod.example"]],
    "notify_sfemc": True,
}


@pytest.mark.asyncio
async def test_alert_events_reach_the_sfemc_over_nats(tmp_path: Path) -> None:
    broker = Broker(free_port(), tmp_path)
    broker.start()
    received: list[AlertEvent] = []
    sfemc_side = await NatsEvents.connect(broker.url, name="sfemc")
    service = AlertService(None, Notifier(None), nats_url=broker.url, tick_s=3600, sliding=False)
    try:
        await subscribe_alerts(sfemc_side, received.append)
        await sfemc_side.flush()
        service.put("acme", "vod", "vod-1", [RULE])
        service.start()  # connects to NATS
        await eventually_async(lambda: service._nats is not None, what="the NATS connection")
        window = service.engine.clock() // S * S
        rows = pa.table({"time": [window + 1], "fqdn": ["vod.example"], "response_time": [500.0]})
        service.observe("flame", "sr_fqdn", rows)
        (event,) = service.evaluate(window + 3 * S)

        # Garbage on the same subjects is dropped by the subscriber.
        await sfemc_side.publish("flame.alerts.acme.vod", {"no": "id"})
        await eventually_async(lambda: received, what="the event over NATS")
        assert received == [
            AlertEvent(
                id=event.id,
                alert="slow",
                sfc="vod",
                sfci="vod-1",
                level="critical",
                time=event.time_ns / 1e9,
            )
        ]
    finally:  # even after a failed assertion: open clients would outlive their event loop
        await service.stop()
        await sfemc_side.close()
        broker.stop()
