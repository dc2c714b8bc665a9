"""CLMC alert events over NATS (distributed deployments): the same events the webhook
`POST /v1/sfemc/events` takes, from subjects `flame.alerts.<tenant>.<sfc>`. SFEMC replicas
share one queue group, so each event is handled once; an event that also came by webhook is
dropped by its id (PolicyTriggers keeps the ids it has seen)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flame.common.nats_events import NatsEvents
from flame.sfemc.events import AlertEvent

__all__ = ["ALERT_SUBJECTS", "alert_from_payload", "subscribe_alerts"]

log = logging.getLogger(__name__)

ALERT_SUBJECTS = "flame.alerts.>"


def alert_from_payload(payload: dict[str, Any]) -> AlertEvent:
    """The SFEMC's view of a CLMC alert event; KeyError/ValueError when it is not one."""
    sfci = payload.get("sfci")
    return AlertEvent(
        id=str(payload["id"]),
        alert=str(payload["alert"]),
        sfc=str(payload["sfc"]),
        sfci=None if sfci is None else str(sfci),
        level=str(payload.get("level", "critical")),
        time=float(payload["time"]),
    )


async def subscribe_alerts(events: NatsEvents, handle: Callable[[AlertEvent], object]) -> None:
    async def on_event(subj: str, payload: dict[str, Any]) -> None:
        try:
            event = alert_from_payload(payload)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("dropping a malformed alert event on %s: %s", subj, exc)
            return
        handle(event)

    await events.subscribe(ALERT_SUBJECTS, on_event, queue="sfemc")
    try:  # so that alerts published once this returns are delivered
        await events.subscribed()
    except TimeoutError:  # nats-py re-sends the subscription on its own; say it may lag
        log.warning("the alert subscription was not confirmed by the NATS server in time")
