"""The typed, immutable service model other components consume (ORCH-8, ORCH-9, SFEMC-2).

The orchestrator, the SFEMC and the CLMC need nothing else from a template: service functions
and their chain for placement and routing, per-cluster initial endpoint states, state-change
policies for the SFEMC and alert rules for the CLMC.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from flame.topology.geo import Area, GeoPoint


class EndpointState(enum.StrEnum):
    """Endpoint states a template may ask for (SFEMC-5 adds the transient ones)."""

    UNPLACED = "unplaced"
    PLACED = "placed"
    BOOTED = "booted"
    CONNECTED = "connected"


INITIAL_STATES = (EndpointState.PLACED, EndpointState.BOOTED, EndpointState.CONNECTED)


class EventType(enum.StrEnum):
    THRESHOLD = "threshold"
    RELATIVE = "relative"
    DEADMAN = "deadman"


class Comparison(enum.StrEnum):
    LT = "lt"
    GT = "gt"
    LTE = "lte"
    GTE = "gte"
    EQ = "eq"
    NEQ = "neq"

    def holds(self, value: float, threshold: float) -> bool:
        return {
            Comparison.LT: value < threshold,
            Comparison.GT: value > threshold,
            Comparison.LTE: value <= threshold,
            Comparison.GTE: value >= threshold,
            Comparison.EQ: value == threshold,
            Comparison.NEQ: value != threshold,
        }[self]


@dataclass(frozen=True, slots=True)
class Port:
    port: int
    protocol: str = "http"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/health"
    port: str | None = None
    interval_s: float = 2.0
    timeout_s: float = 1.0
    retries: int = 3


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceFunction:
    name: str
    image: str
    fqdn: str
    runtime: str = "process"
    ports: tuple[Port, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    health_check: HealthCheck | None = None
    resources: Resources = Resources()
    upstream: tuple[str, ...] = ()  # SFs this one sends requests to (the chain)
    source: str = ""  # file:line:col of the node template


@dataclass(frozen=True, slots=True)
class ChainEdge:
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    """One SF's endpoint state on one cluster."""

    cluster: str
    sf: str
    state: EndpointState


@dataclass(frozen=True, slots=True)
class InitialPolicy:
    name: str
    targets: tuple[str, ...]
    states: tuple[EndpointTarget, ...]
    area: Area | None = None


@dataclass(frozen=True, slots=True)
class AlertRule:
    """A CLMC alert: aggregate `measurement.field` over `granularity_s`, compare, notify."""

    name: str
    policy: str
    event_type: EventType
    measurement: str
    field: str
    threshold: float | None
    granularity_s: float
    aggregation: str
    comparison: Comparison | None
    tags: tuple[tuple[str, str], ...] = ()
    notify_sfemc: bool = False
    webhooks: tuple[str, ...] = ()
    description: str = ""
    # The WARNING level: the comparison holds against this but not `threshold` (CRITICAL).
    warning_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class StateChangePolicy:
    """When alert `alert` fires, the SFEMC moves these endpoints to these states."""

    name: str
    trigger: str
    alert: str
    changes: tuple[EndpointTarget, ...]
    period_s: float | None = None


@dataclass(frozen=True, slots=True)
class ServiceModel:
    sfc: str
    sfci: str
    description: str
    service_functions: tuple[ServiceFunction, ...]
    chain: tuple[ChainEdge, ...]
    initial_policies: tuple[InitialPolicy, ...]
    state_change_policies: tuple[StateChangePolicy, ...]
    alert_rules: tuple[AlertRule, ...]
    sources: tuple[str, ...] = ()

    def sf(self, name: str) -> ServiceFunction:
        for sf in self.service_functions:
            if sf.name == name:
                return sf
        raise KeyError(name)

    def initial_states(self) -> dict[tuple[str, str], EndpointState]:
        """(cluster, sf) -> desired initial state, over every initial policy."""
        return {(t.cluster, t.sf): t.state for p in self.initial_policies for t in p.states}

    def alert(self, name: str) -> AlertRule:
        for rule in self.alert_rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "INITIAL_STATES",
    "AlertRule",
    "Area",
    "ChainEdge",
    "Comparison",
    "EndpointState",
    "EndpointTarget",
    "EventType",
    "GeoPoint",
    "HealthCheck",
    "InitialPolicy",
    "Port",
    "Resources",
    "ServiceFunction",
    "ServiceModel",
    "StateChangePolicy",
]
