"""Transformations over a series (derivative, difference, cumulative_sum, moving_average and
their non-negative forms), as SQL window functions over the rows of the raw or aggregate query.

Per InfluxDB 1.6: applied per series in output order (ORDER BY time DESC reverses them), null
values are skipped, the first point(s) of a series produce no row, and a raw point with the
same time as the previous one is skipped by derivative and difference (elapsed time 0).
"""

from __future__ import annotations

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.errors import StatementError

__all__ = ["TRANSFORMS", "check_transform", "transform_sql"]

TRANSFORMS = frozenset(
    {"derivative", "non_negative_derivative", "difference", "non_negative_difference",
     "cumulative_sum", "moving_average"}
)  # fmt: skip
_SECOND = 1_000_000_000


def check_transform(call: A.Call) -> None:
    name, args = call.name, call.args
    if not args:
        raise StatementError(f"invalid number of arguments for {name}, expected at least 1, got 0")
    if name.endswith("derivative"):
        if len(args) > 2:
            raise StatementError(
                f"invalid number of arguments for {name}, expected at least 1 but no more than 2, got {len(args)}"
            )
        if len(args) == 2 and not (isinstance(args[1], A.DurationLiteral) and args[1].ns > 0):
            raise StatementError(
                f"second argument to {name} must be a duration, got {type(args[1]).__name__}"
            )
    elif name == "moving_average":
        if len(args) != 2:
            raise StatementError(
                f"invalid number of arguments for moving_average, expected 2, got {len(args)}"
            )
        if not (isinstance(args[1], A.IntegerLiteral) and args[1].value > 1):
            raise StatementError("moving_average window must be greater than 1")
    elif len(args) != 1:
        raise StatementError(f"invalid number of arguments for {name}, expected 1, got {len(args)}")


def transform_sql(
    call: A.Call,
    base: str,
    gcols: list[str],
    kind: str,
    every: int,
    descending: bool,
    *,
    dedupe: bool,
) -> tuple[str, str]:
    """SQL of the transformed series over `base` (columns g0.., __t, c0) and the result kind.

    The result has the columns g0.., __t, c0; rows not produced by InfluxDB are filtered out."""
    part = f"PARTITION BY {', '.join(gcols)} " if gcols else ""
    direction = " DESC" if descending else ""
    order = f"ORDER BY __t{direction}, __o{direction}"  # __o: the base query's order of equal times
    win = f"({part}{order})"
    name = call.name
    cols = [*gcols, "__t"]
    # a repeated time has no elapsed time: derivative and difference skip it (not the sums)
    dedupe = dedupe and name.endswith(("derivative", "difference"))
    lagged = (f"SELECT {', '.join(cols)}, __o, c0 AS v, lag(c0) OVER {win} AS pv, lag(__t) OVER {win} AS pt, "
              f"row_number() OVER {win} AS rn FROM ({base}) b WHERE c0 IS NOT NULL"
              f"{' AND __dup = 1' if dedupe else ''}")  # fmt: skip
    if name.endswith("derivative"):
        unit = (
            call.args[1].ns
            if len(call.args) == 2 and isinstance(call.args[1], A.DurationLiteral)
            else (every or _SECOND)
        )
        elapsed = "pt - __t" if descending else "__t - pt"  # positive in either order, as InfluxDB
        value, keep, out = (
            f"(v - pv) / (CAST({elapsed} AS DOUBLE) / {int(unit)})",
            "pv IS NOT NULL",
            "float",
        )
    elif name.endswith("difference"):
        value, keep, out = "(v - pv)", "pv IS NOT NULL", kind
    elif name == "cumulative_sum":
        total = f"sum(v) OVER ({part}{order} ROWS UNBOUNDED PRECEDING)"
        value = total if kind == "float" else f"CAST({total} AS BIGINT)"
        keep, out = "TRUE", kind
    else:  # moving_average
        size = call.args[1].value if isinstance(call.args[1], A.IntegerLiteral) else 2
        frame = f"ROWS BETWEEN {int(size) - 1} PRECEDING AND CURRENT ROW"
        value = f"avg(CAST(v AS DOUBLE)) OVER ({part}{order} {frame})"
        keep, out = f"rn >= {int(size)}", "float"
    # windows first, then the filter: dropping rows must not change what the windows see
    computed = f"SELECT {', '.join(cols)}, __o, {value} AS c0, {keep} AS __keep FROM ({lagged}) w"
    nonneg = " AND c0 >= 0" if name.startswith("non_negative") else ""
    return f"SELECT {', '.join(cols)}, __o, c0 FROM ({computed}) x WHERE __keep{nonneg}", out
