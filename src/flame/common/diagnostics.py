"""Diagnostics as data: what is wrong, where, the offending value and how to fix it.

Shared by every loader that reads a user's file (FLAME-TOSCA templates, topology files) so that
the CLI and the HTTP APIs render them the same way. Code never branches on message text: it
branches on `code`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from flame.common.errors import UserError


class Position(NamedTuple):
    """A place in a source file; line and column are 1-based as editors show them.

    A NamedTuple rather than a frozen dataclass: the YAML loader makes one per key and value,
    and tuples are several times cheaper to create.
    """

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    position: Position
    severity: Severity = Severity.ERROR
    value: object = None
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.position}: {self.code} {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def as_dict(self) -> dict[str, object]:
        value = self.value
        if value is not None and not isinstance(value, str | int | float | bool | list | dict):
            value = str(value)
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "value": value,
            "hint": self.hint,
        }


@dataclass(slots=True)
class DiagnosticSink:
    """Collects diagnostics so that validation reports every error, not only the first."""

    items: list[Diagnostic] = field(default_factory=list)
    _seen: set[tuple[str, Position, str]] = field(default_factory=set)

    def error(
        self,
        code: str,
        message: str,
        position: Position,
        *,
        value: object = None,
        hint: str | None = None,
    ) -> None:
        self.add(Diagnostic(code, message, position, Severity.ERROR, value, hint))

    def warning(
        self,
        code: str,
        message: str,
        position: Position,
        *,
        value: object = None,
        hint: str | None = None,
    ) -> None:
        self.add(Diagnostic(code, message, position, Severity.WARNING, value, hint))

    def add(self, diagnostic: Diagnostic) -> None:
        # The same fault reached through two paths (say, a type used twice) is reported once.
        key = (diagnostic.code, diagnostic.position, diagnostic.message)
        if key in self._seen:
            return
        self._seen.add(key)
        self.items.append(diagnostic)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    def reported_at(self, position: Position) -> bool:
        """Whether an error already points here; later checks use it not to cascade."""
        return any(d.position == position and d.severity is Severity.ERROR for d in self.items)

    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: (d.position, d.code))

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)


class ValidationFailed(UserError):
    """A user's file has errors; carries every one of them, located."""

    code = "validation_failed"
    http_status = 422

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.position, d.code))
        errors = [d for d in self.diagnostics if d.severity is Severity.ERROR]
        first = str(errors[0]) if errors else "no errors"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{first}{more}")

    def as_dict(self) -> dict[str, object]:
        return {
            "error": self.code,
            "message": str(self),
            "diagnostics": [d.as_dict() for d in self.diagnostics],
        }
