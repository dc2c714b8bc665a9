"""What one CLMC accepts, in the spirit of InfluxDB's limits (issue 12): every limit makes a
point the store could not hold cheaply impossible, and is answered as InfluxDB answers its own,
a 400 `partial write: <reason> dropped=N` that stores the rest of the batch.

| limit | default | refused as |
|---|---|---|
| key length (InfluxDB's fixed 64 KiB) | 65,535 bytes | `unable to parse '...': max key length exceeded: N > 65535` (the line) |
| fields per point | 1,000 | `max-fields-per-point limit exceeded (N/1000): measurement="m"` |
| tags per point | 256 | `max-tags-per-point limit exceeded (N/256): measurement="m"` |
| fields per measurement | 1,000 | `max-fields-per-measurement limit exceeded (N/1000): measurement="m" field="f"` |
| tag keys per measurement | 512 | `max-tag-keys-per-measurement limit exceeded (N/512): measurement="m" tag="t"` |
| series per database | 1,000,000 | `max-series-per-database limit exceeded: (1000000)` (InfluxDB's text) |
| values per tag | 100,000 | `max-values-per-tag limit exceeded (N/100000): measurement="m" tag="t" value="v"` (InfluxDB's text) |

Each is set by the environment of `flame serve clmc` (`FLAME_CLMC_MAX_FIELDS_PER_POINT`, ...,
the names below upper-cased with the prefix); 0 means no limit (not advised). Series and tag
values are counted per measurement and retention policy (tag values) and per database (series);
a DROP, DELETE or retention pass that removes series lets new ones in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from flame.common.errors import UserError

__all__ = ["MAX_KEY_BYTES", "Limits", "over"]

MAX_KEY_BYTES = 65_535  # InfluxDB's MaxKeyLength: a series key plus a field key


@dataclass(frozen=True, slots=True)
class Limits:
    max_fields_per_point: int = 1_000
    max_tags_per_point: int = 256
    max_fields_per_measurement: int = 1_000
    max_tag_keys_per_measurement: int = 512
    max_series_per_database: int = 1_000_000
    max_values_per_tag: int = 100_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """Defaults, overridden by `FLAME_CLMC_<NAME>` variables (e.g. `FLAME_CLMC_MAX_SERIES_
        PER_DATABASE=5000000`); a value that is no non-negative integer is a UserError."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("FLAME_CLMC_" + f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise UserError(
                    f"FLAME_CLMC_{f.name.upper()}={raw!r}: expected a whole number"
                ) from None
            if value < 0:
                raise UserError(f"FLAME_CLMC_{f.name.upper()}={raw!r}: expected 0 or more")
            values[f.name] = value
        return cls(**values)


def over(limit: int, count: int) -> bool:
    """Whether `count` exceeds `limit` (0: no limit)."""
    return limit > 0 and count > limit
