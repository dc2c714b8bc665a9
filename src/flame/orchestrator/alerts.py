"""Handing alert rules to the CLMC (ORCH-8): the interface, and the in-process sink of tests
and `--no-clmc` (`clmc_sink.HttpAlertSink` is the real one)."""

from __future__ import annotations

from typing import ClassVar, Protocol

from flame.common.errors import UserError
from flame.tosca.model import AlertRule

__all__ = ["AlertRulesRefused", "AlertSink", "InProcessAlertSink"]


class AlertRulesRefused(UserError):
    """The CLMC refused the service's alert rules; the deployment is not applied."""

    code: ClassVar[str] = "alert_rules_refused"
    http_status: ClassVar[int] = 400


class AlertSink(Protocol):
    def set_rules(
        self, sfc: str, tenant: str, rules: tuple[AlertRule, ...], sfci: str = ""
    ) -> None:
        """Replace the chain's alert rules (idempotent); alert events name `sfci`.

        Raises `AlertRulesRefused` when the CLMC refuses them (e.g. a webhook its outbound
        policy forbids); a CLMC that cannot be reached is not an error (the sink retries)."""
        ...

    def remove_rules(self, sfc: str) -> None: ...


class InProcessAlertSink:
    """Keeps the rules per chain; the in-process CLMC (or a test) reads `rules`."""

    def __init__(self) -> None:
        self.rules: dict[str, tuple[str, tuple[AlertRule, ...]]] = {}  # sfc -> (tenant, rules)

    def set_rules(
        self, sfc: str, tenant: str, rules: tuple[AlertRule, ...], sfci: str = ""
    ) -> None:
        self.rules[sfc] = (tenant, rules)

    def remove_rules(self, sfc: str) -> None:
        self.rules.pop(sfc, None)
