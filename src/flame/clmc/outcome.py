"""What one write did (`flame.clmc.ingest`), worded as InfluxDB answers it."""

from __future__ import annotations

from dataclasses import dataclass, field

from flame.clmc.lineproto import Dropped

__all__ = ["WriteOutcome"]

_RETENTION = "points beyond retention policy"


@dataclass
class WriteOutcome:
    """What one write did, and InfluxDB's error text for it (None = 204)."""

    points: int = 0
    parse_errors: list[str] = field(default_factory=list)
    first_error_line: int | None = None
    dropped: list[Dropped] = field(default_factory=list)  # refused by the store's rules
    beyond_retention: list[int] = field(default_factory=list)  # lines older than the policy

    def error(self) -> str | None:
        # As InfluxDB: a shard's refusal (type conflict, limit) first, then the retention
        # policy's, then the lines that did not parse.
        if self.dropped:
            return f"partial write: {self.dropped[0].message} dropped={len(self.dropped)}"
        if self.beyond_retention:
            return f"partial write: {_RETENTION} dropped={len(self.beyond_retention)}"
        if not self.parse_errors:
            return None
        joined = "\n".join(self.parse_errors)
        return f"partial write: {joined} dropped=0" if self.points else joined

    def error_line(self) -> int | None:
        if self.dropped:
            return self.dropped[0].line
        if self.beyond_retention:
            return self.beyond_retention[0]
        return self.first_error_line
