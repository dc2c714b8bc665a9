"""InfluxQL errors.

::

    UserError
    └── InfluxQLError               any InfluxQL failure
        ├── ParseError              the text is not InfluxQL          HTTP 400 {"error": ...}
        └── StatementError          one statement failed to run       inside the 200 body

A ParseError rejects the whole request, as InfluxDB does; a StatementError becomes
``{"statement_id": N, "error": message}`` and the following statements still run.
"""

from __future__ import annotations

from flame.common.errors import UserError

__all__ = ["InfluxQLError", "ParseError", "StatementError"]


class InfluxQLError(UserError):
    code = "influxql_error"


class ParseError(InfluxQLError):
    """Bad query text; `line`/`char` are 1-based like InfluxDB's messages."""

    code = "influxql_parse_error"

    def __init__(
        self,
        detail: str,
        *,
        line: int,
        char: int,
        found: str = "",
        expected: str = "",
        show_position: bool = True,
    ) -> None:
        where = f" at line {line}, char {char}" if show_position else ""
        super().__init__(
            f"error parsing query: {detail}{where}",
            line=line,
            char=char,
            found=found,
            expected=expected,
        )
        self.line = line
        self.char = char

    def influx_body(self) -> dict[str, object]:
        """The body InfluxDB answers with (HTTP 400)."""
        return {"error": self.message}


class StatementError(InfluxQLError):
    """A statement that parsed but cannot run (unknown database, bad combination...)."""

    code = "influxql_statement_error"
