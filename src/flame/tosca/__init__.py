"""FLAME-TOSCA: templates in, every error located, a typed service model out (ORCH-1/2/7, SFEMC-1/2).

Exceptions: `flame.common.diagnostics.ValidationFailed` (a `UserError`) carries every
`Diagnostic` found; nothing else escapes for a user's mistake.
"""

from flame.common.diagnostics import Diagnostic, Position, Severity, ValidationFailed
from flame.tosca.model import (
    AlertRule,
    ChainEdge,
    Comparison,
    EndpointState,
    EndpointTarget,
    EventType,
    HealthCheck,
    InitialPolicy,
    Port,
    Resources,
    ServiceFunction,
    ServiceModel,
    StateChangePolicy,
)
from flame.tosca.validator import ValidationResult, load_service, validate, validate_texts

__all__ = [
    "AlertRule",
    "ChainEdge",
    "Comparison",
    "Diagnostic",
    "EndpointState",
    "EndpointTarget",
    "EventType",
    "HealthCheck",
    "InitialPolicy",
    "Port",
    "Position",
    "Resources",
    "ServiceFunction",
    "ServiceModel",
    "Severity",
    "StateChangePolicy",
    "ValidationFailed",
    "ValidationResult",
    "load_service",
    "validate",
    "validate_texts",
]
