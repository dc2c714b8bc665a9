"""Configuration and decision events to the CLMC as line protocol (CLMC-4, CLMC-5).

Every endpoint lifecycle transition becomes an `endpoint_config` point and every SFEMC
decision about an alert an `sfemc_decision` point (see docs/clmc-information-model.md). Points
are queued by the bus handler (no I/O on the lifecycle's path) and sent in batches by the common
CLMC writer on its own thread; when the CLMC is down a bounded backlog is kept and, past it, the
oldest points are dropped and counted, so monitoring can never stall endpoint management.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

from flame.common.clmc_client import ClmcTarget, ThreadedReporter, Verify
from flame.common.lineproto import FieldValue, point
from flame.sfemc.events import CONFIG_TOPIC, DECISION_TOPIC, ConfigEvent, DecisionEvent, EventBus

__all__ = ["ClmcReporter", "Place", "config_line", "decision_line"]


class _StateTimes:
    """Per endpoint and state: total seconds and visits, for `<state>_sum` and `<state>_mst`."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.counts: dict[tuple[str, str], int] = collections.defaultdict(int)

    def add(self, sfe: str, state: str, seconds: float) -> tuple[float, float]:
        key = (sfe, state)
        self.sums[key] += seconds
        self.counts[key] += 1
        return self.sums[key], self.sums[key] / self.counts[key]


@dataclass(frozen=True, slots=True)
class Place:
    """Where a cluster is (CLMC-5: configuration events carry geolocation)."""

    latitude: float | None = None
    longitude: float | None = None
    location: str | None = None  # a named location of the topology


def config_line(
    event: ConfigEvent, state_sum: float, state_mean: float, place: Place | None = None
) -> str:
    tags = {
        "sfc": event.sfc,
        "sfci": event.sfci,
        "sf": event.sf,
        "sfe": event.sfe,
        "cluster": event.cluster,
        "location": (place.location if place else None) or "",
        "tenant": event.tenant or "",
    }
    prev = event.from_state
    fields: dict[str, FieldValue] = {
        "current_state": event.to_state,
        "previous_state": prev,
        f"{prev}_s": float(event.duration_s),  # this visit of the previous state
        f"{prev}_sum": float(state_sum),  # every visit so far (since this SFEMC started)
        f"{prev}_mst": float(state_mean),  # mean state time
    }
    if event.reason:
        fields["reason"] = event.reason
    if place is not None and place.latitude is not None and place.longitude is not None:
        fields["latitude"] = float(place.latitude)
        fields["longitude"] = float(place.longitude)
    return point("endpoint_config", tags, fields, int(event.time * 1e9))


def decision_line(event: DecisionEvent) -> str:
    tags = {
        "sfc": event.sfc,
        "alert": event.alert,
        "decision": event.decision,
        "tenant": event.tenant or "",
    }
    fields: dict[str, FieldValue] = {
        "event_id": event.event_id,
        "reason": event.reason,
        "changes": "; ".join(event.changes),
    }
    return point("sfemc_decision", tags, fields, int(event.time * 1e9))


class ClmcReporter(ThreadedReporter):
    """Lifecycle and decision events to the CLMC: formatting here, sending by the common
    writer (`flame.common.clmc_client`) on a thread of its own."""

    def __init__(
        self,
        bus: EventBus,
        clmc_url: str,
        token: str | None,
        *,
        database: str = "flame",
        interval_s: float = 0.5,
        max_backlog: int = 10_000,
        places: Mapping[str, Place] | None = None,
        verify: Verify = True,
    ) -> None:
        self._places = dict(places or {})
        self._times = _StateTimes()
        super().__init__(
            ClmcTarget(clmc_url, database, token, verify, timeout_s=3.0),
            name="clmc-reporter",
            interval_s=interval_s,
            max_backlog=max_backlog,
        )
        self._writer.start()
        self._unsubscribe = [
            bus.subscribe(CONFIG_TOPIC, self._on_config),
            bus.subscribe(DECISION_TOPIC, self._on_decision),
        ]

    def _on_config(self, event: ConfigEvent) -> None:
        total, mean = self._times.add(event.sfe, event.from_state, event.duration_s)
        self._writer.add(config_line(event, total, mean, self._places.get(event.cluster)))

    def _on_decision(self, event: DecisionEvent) -> None:
        self._writer.add(decision_line(event))

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        super().close()
