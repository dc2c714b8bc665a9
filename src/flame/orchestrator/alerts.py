"""Handing alert rules to the CLMC (ORCH-8): an interface until the CLMC's API lands."""

from __future__ import annotations

from typing import Protocol

from flame.tosca.model import AlertRule

__all__ = ["AlertSink", "InProcessAlertSink"]


class AlertSink(Protocol):
    def set_rules(
        self, sfc: str, tenant: str, rules: tuple[AlertRule, ...], sfci: str = ""
    ) -> None:
        """Replace the chain's alert rules (idempotent); alert events name `sfci`."""
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
