"""CLMC ingest and store errors, carrying InfluxDB 1.x's wording so clients see the same text.

::

    UserError (flame.common.errors)            HTTP 400
    ├── LineProtocolError                      one unparsable line: number, line, reason
    ├── FieldTypeConflict                      a field written with a new type
    ├── DatabaseNotFound                       HTTP 404
    └── RetentionPolicyNotFound                HTTP 404 (InfluxDB says 500; we never answer 500)
    FlameError
    └── Overloaded                             HTTP 503 with Retry-After
"""

from __future__ import annotations

from typing import ClassVar

from flame.common.errors import FlameError, UserError

__all__ = [
    "DatabaseNotFound",
    "FieldTypeConflict",
    "LineProtocolError",
    "Overloaded",
    "RetentionPolicyNotFound",
]


class LineProtocolError(UserError):
    """One line that InfluxDB would reject; `influx_message` is InfluxDB's text for it."""

    code = "line_protocol"

    def __init__(self, line_no: int, line: str, reason: str) -> None:
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(
            f"line {line_no}: unable to parse '{shown}': {reason}", line=line_no, reason=reason
        )
        self.line_no = line_no
        self.line = line
        self.reason = reason

    @property
    def influx_message(self) -> str:
        return f"unable to parse '{self.line}': {self.reason}"


class FieldTypeConflict(UserError):
    code = "field_type_conflict"

    def __init__(self, measurement: str, field: str, got: str, existing: str) -> None:
        super().__init__(
            f'field type conflict: input field "{field}" on measurement "{measurement}" '
            f"is type {got}, already exists as type {existing}",
            measurement=measurement,
            field=field,
        )


class DatabaseNotFound(UserError):
    code = "database_not_found"
    http_status: ClassVar[int] = 404

    def __init__(self, database: str) -> None:
        super().__init__(f'database not found: "{database}"', database=database)


class RetentionPolicyNotFound(UserError):
    code = "retention_policy_not_found"
    http_status: ClassVar[int] = 404

    def __init__(self, policy: str) -> None:
        super().__init__(f"retention policy not found: {policy}", policy=policy)


class Overloaded(FlameError):
    """The write-ahead log or the apply queue is over its bound: retry after a pause."""

    code = "overloaded"
    http_status: ClassVar[int] = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after=retry_after_s)
        self.retry_after_s = retry_after_s
