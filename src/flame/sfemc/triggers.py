"""Policy triggers: CLMC alert events -> desired-state changes (SFEMC-3, SFEMC-4).

An alert event names an alert rule (or its trigger) of a deployed chain. It is matched to the
chain's StateChange policies; each match changes the desired states its action lists. Decisions
are recorded and published (`DECISION_TOPIC`) with their reason, including the ignored ones:

* unknown chain, instance or alert; a level that is not a firing level (the alert cleared);
* a duplicate (an event id already seen: webhooks are retried);
* out of order (older than the last event applied for that policy trigger: a late retry must
  not undo a newer decision).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flame.sfemc.events import DECISION_TOPIC, AlertEvent, DecisionEvent, EventBus
from flame.sfemc.store import SfemcStore

__all__ = ["FIRING_LEVELS", "PolicyChange", "PolicyTriggers", "sfe_id"]

log = logging.getLogger("flame.sfemc.triggers")

FIRING_LEVELS = frozenset({"critical", "warning", "warn", "alert", "firing", "crit"})


def sfe_id(sfci: str, sf: str, cluster: str) -> str:
    """Endpoint ids: one per (instance, SF, cluster); stable across restarts and re-submits."""
    return f"{sfci}.{sf}.{cluster}"


@dataclass(frozen=True, slots=True)
class PolicyChange:
    policy: str
    trigger: str
    alert: str
    changes: tuple[tuple[str, str, str], ...]  # (cluster, sf, state)


def policies_of(model: dict[str, Any]) -> list[PolicyChange]:
    """The state-change policies of a stored `ServiceModel.to_dict()`."""
    return [
        PolicyChange(
            policy=str(p["name"]),
            trigger=str(p["trigger"]),
            alert=str(p["alert"]),
            changes=tuple((str(c["cluster"]), str(c["sf"]), str(c["state"])) for c in p["changes"]),
        )
        for p in model.get("state_change_policies", [])
    ]


class PolicyTriggers:
    def __init__(
        self,
        store: SfemcStore,
        bus: EventBus,
        set_desired: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._set_desired = set_desired
        self._clock = clock

    def handle(self, event: AlertEvent) -> DecisionEvent:
        decision = self._decide(event)
        self._bus.publish(DECISION_TOPIC, decision)
        log.info(
            "alert %s (%s for %s): %s, %s",
            event.id,
            event.alert,
            event.sfc,
            decision.decision,
            decision.reason,
        )
        return decision

    def _ignore(self, event: AlertEvent, reason: str, *, record: bool = True) -> DecisionEvent:
        now = self._clock()
        if record:
            self._store.record_alert(
                event.id, event.sfc, event.alert, event.time, "ignored", reason, now
            )
        return DecisionEvent(event.id, event.sfc, event.alert, "ignored", reason, now)

    def _decide(self, event: AlertEvent) -> DecisionEvent:
        if self._store.alert_seen(event.id):
            return self._ignore(
                event, f"duplicate: event id '{event.id}' was already handled", record=False
            )
        service = self._store.service(event.sfc)
        if service is None:
            return self._ignore(event, f"no deployed service function chain '{event.sfc}'")
        if event.sfci is not None and event.sfci != service.sfci:
            return self._ignore(
                event,
                f"instance '{event.sfci}' is not deployed; chain '{event.sfc}' runs instance '{service.sfci}'",
            )
        if event.level.lower() not in FIRING_LEVELS:
            return self._ignore(
                event,
                f"level '{event.level}' is not a firing level ({', '.join(sorted(FIRING_LEVELS))}); "
                "policies act only when an alert fires",
            )
        matches = [p for p in policies_of(service.model) if event.alert in (p.alert, p.trigger)]
        if not matches:
            known = sorted({p.alert for p in policies_of(service.model)})
            return self._ignore(
                event,
                f"no state-change policy of '{event.sfc}' is triggered by alert '{event.alert}'; "
                f"alerts with policies: {', '.join(known) or 'none'}",
            )
        return self._apply(event, service.sfci, matches, service.tenant)

    def _apply(
        self, event: AlertEvent, sfci: str, matches: Sequence[PolicyChange], tenant: str
    ) -> DecisionEvent:
        applied: list[str] = []
        stale: list[str] = []
        for policy in matches:
            key = f"{policy.policy}/{policy.trigger}"
            last = self._store.policy_clock(event.sfc, key)
            if last is not None and event.time < last:
                stale.append(
                    f"{key} (last applied event at {last:.3f}, this one at {event.time:.3f})"
                )
                continue
            for cluster, sf, state in policy.changes:
                sfe = sfe_id(sfci, sf, cluster)
                self._set_desired(sfe, state)
                applied.append(f"{sfe}: {state}")
            self._store.set_policy_clock(event.sfc, key, event.time)
        now = self._clock()
        if not applied:
            reason = "out of order: older than the last applied event for " + "; ".join(stale)
            self._store.record_alert(
                event.id, event.sfc, event.alert, event.time, "ignored", reason, now
            )
            return DecisionEvent(
                event.id, event.sfc, event.alert, "ignored", reason, now, tenant=tenant
            )
        names = ", ".join(sorted({f"{p.policy}/{p.trigger}" for p in matches}))
        reason = f"policy {names} fired by alert '{event.alert}' ({event.level})"
        if stale:
            reason += "; skipped out-of-order " + "; ".join(stale)
        if not self._store.record_alert(
            event.id, event.sfc, event.alert, event.time, "applied", reason, now
        ):
            reason += " (a concurrent duplicate was recorded first)"
        return DecisionEvent(
            event.id,
            event.sfc,
            event.alert,
            "applied",
            reason,
            now,
            tuple(applied),
            tenant=tenant,
        )
