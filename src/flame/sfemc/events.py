"""The event bus interface and its in-process implementation (SFEMC-5, CLMC-4/5 consume these).

Topics used by the SFEMC:

* `CONFIG_TOPIC` carries `ConfigEvent`s: one per endpoint lifecycle transition;
* `ALERT_TOPIC` carries `AlertEvent`s from the CLMC (SFEMC-3/4);
* `DECISION_TOPIC` carries `DecisionEvent`s: what the SFEMC did with each alert and why.

Handlers run synchronously inside `publish`, so a publisher knows every subscriber has seen the
event when `publish` returns; a handler that raises is logged and does not stop the others (one
broken consumer must not block the lifecycle). A distributed deployment puts NATS behind the
same two methods.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = [
    "ALERT_TOPIC",
    "CONFIG_TOPIC",
    "DECISION_TOPIC",
    "AlertEvent",
    "ConfigEvent",
    "DecisionEvent",
    "EventBus",
    "Handler",
    "InProcessBus",
]

log = logging.getLogger("flame.sfemc.events")

CONFIG_TOPIC = "sfemc.config"
ALERT_TOPIC = "clmc.alert"
DECISION_TOPIC = "sfemc.decision"

Handler = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """One endpoint lifecycle transition (a CLMC configuration event)."""

    cluster: str
    sfc: str
    sfci: str
    sf: str
    sfe: str
    from_state: str
    to_state: str
    time: float  # seconds since the epoch
    duration_s: float  # time spent in `from_state`
    reason: str | None = None
    # The owner, so the CLMC shows a tenant its own points (issue 11). Not part of the event's
    # identity: the transition history does not keep it.
    tenant: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A CLMC alert notification (SFEMC-3): `alert` names the alert rule or its trigger."""

    id: str
    alert: str
    sfc: str
    sfci: str | None
    level: str
    time: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """What the SFEMC decided about an alert event, and why (SFEMC-4)."""

    event_id: str
    sfc: str
    alert: str
    decision: str  # "applied" | "ignored"
    reason: str
    time: float
    changes: tuple[str, ...] = ()  # "<sfe>: <state>"
    tenant: str | None = field(default=None, compare=False)  # the chain's owner, if known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventBus(Protocol):
    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Call `handler(event)` for every event on `topic`; returns an unsubscribe function."""
        ...

    def publish(self, topic: str, event: Any) -> None: ...


class InProcessBus:
    """Synchronous fan-out within one process; thread-safe subscription changes."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        with self._lock:
            self._handlers.setdefault(topic, []).append(handler)

        def unsubscribe() -> None:
            with self._lock:
                handlers = self._handlers.get(topic, [])
                if handler in handlers:
                    handlers.remove(handler)

        return unsubscribe

    def publish(self, topic: str, event: Any) -> None:
        with self._lock:
            handlers = list(self._handlers.get(topic, ()))
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                log.exception(
                    "subscriber %r of %s failed; the other subscribers still ran", handler, topic
                )
