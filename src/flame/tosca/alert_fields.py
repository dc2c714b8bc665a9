"""The field tables of alert triggers: a trigger's and its condition's scalar fields (SFEMC-1,
CLMC-19), as shapes of `flame.common.yamlfields`.

Each check words its diagnostic the way the alert checker always has and carries its stable code;
`flame.tosca.alerts` reads triggers with these shapes and checks what spans fields or the chain.
"""

from __future__ import annotations

import re
from typing import Any

from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlfields import Check, Field, FieldContext, Problem, Shape
from flame.common.yamlshape import did_you_mean, kind_of
from flame.tosca import codes
from flame.tosca.model import Comparison, EventType
from flame.tosca.profile_context import is_number

TRIGGER_KEYS = {"description", "event_type", "metric", "condition", "action"}
AGGREGATIONS = (
    "mean",
    "median",
    "min",
    "max",
    "sum",
    "count",
    "first",
    "last",
    "spread",
    "stddev",
    "mode",
)
# Names other monitoring tools use, mapped to ours for the hint.
_AGGREGATION_ALIASES = {
    "avg": "did you mean 'mean'?",
    "average": "did you mean 'mean'?",
    "p50": "did you mean 'median'?",
    "p95": "did you mean 'percentile_95'?",
    "p99": "did you mean 'percentile_99'?",
    "std": "did you mean 'stddev'?",
    "total": "did you mean 'sum'?",
}
_PERCENTILE = re.compile(r"^percentile_(\d{1,2})$")
_METRIC = re.compile(r"^[A-Za-z_][\w-]*\.[A-Za-z_][\w-]*$")


class _AnyKey(frozenset[str]):
    """An `allowed` set that admits every key: the caller has already checked them."""

    def __contains__(self, key: object) -> bool:
        return True


# The condition's keys are checked under their own name ("condition of <trigger>") before the
# fields are read, while the fields' messages name the trigger itself.
_CHECKED_BY_CALLER = _AnyKey()


def _event_type(raw: Any, ctx: FieldContext) -> Any:
    if raw is None:
        return Problem(
            codes.BAD_TRIGGER,
            f"{ctx.what} has no event_type",
            hint="add 'event_type: threshold' (or relative, deadman)",
            where="anchor",
        )
    try:
        return EventType(raw)
    except ValueError:
        return Problem(
            codes.BAD_TRIGGER,
            f"{ctx.what}: unknown event_type '{raw}'",
            value=raw,
            hint=did_you_mean(raw, [e.value for e in EventType])
            or "use threshold, relative or deadman",
        )


def _metric(raw: Any, ctx: FieldContext) -> Any:
    """'<measurement>.<field>' as the pair (measurement, field)."""
    if isinstance(raw, str) and _METRIC.match(raw):
        return tuple(raw.split(".", 1))
    return Problem(
        codes.BAD_METRIC,
        f"{ctx.what}: metric must be '<measurement>.<field>', got {kind_of(raw)}",
        value=raw if isinstance(raw, str) else None,
        hint="for example 'metric: sr_requests.response_time'",
    )


def _threshold(raw: Any, ctx: FieldContext) -> Any:
    if is_number(raw):
        return raw
    return Problem(
        codes.BAD_TRIGGER,
        f"{ctx.what}: condition.threshold must be a number, got {kind_of(raw)}",
        hint="for example 'threshold: 100'",
    )


def _seconds(raw: Any, ctx: FieldContext) -> Any:
    """A positive duration: a number of seconds or a time like '30 s'."""
    if is_number(raw) and raw > 0:
        return float(raw)
    if isinstance(raw, str):
        try:
            seconds = parse_scalar(raw, "scalar-unit.time")
        except ScalarError:
            seconds = 0.0
        if seconds > 0:
            return seconds
    return Problem(
        codes.BAD_TRIGGER,
        f"{ctx.what}: {ctx.key} must be a positive number of seconds (or a time like '30 s'), "
        f"got {kind_of(raw)}",
        hint=f"for example '{ctx.key}: 10'",
    )


def _aggregation(raw: Any, ctx: FieldContext) -> Any:
    if isinstance(raw, str):
        match = _PERCENTILE.match(raw)
        if raw in AGGREGATIONS or (match is not None and 1 <= int(match.group(1)) <= 99):
            return raw
    return Problem(
        codes.BAD_AGGREGATION,
        f"{ctx.what}: unknown aggregation_method {raw!r}",
        value=raw if isinstance(raw, str) else None,
        hint=_AGGREGATION_ALIASES.get(str(raw).lower())
        or did_you_mean(raw, AGGREGATIONS)
        or f"use one of {', '.join(AGGREGATIONS)} or percentile_N",
    )


def _comparison(required: bool) -> Check:
    """A comparison_operator; a deadman alert may leave it out."""

    def check(raw: Any, ctx: FieldContext) -> Any:
        if raw is None:
            return (
                Problem(
                    codes.BAD_TRIGGER,
                    f"{ctx.what}: condition needs a comparison_operator",
                    hint="add 'comparison_operator: gt' (lt, gt, lte, gte, eq, neq)",
                    where="anchor",
                )
                if required
                else None
            )
        try:
            return Comparison(raw)
        except ValueError:
            return Problem(
                codes.BAD_TRIGGER,
                f"{ctx.what}: unknown comparison_operator {raw!r}",
                value=raw if isinstance(raw, str) else None,
                hint=did_you_mean(raw, [c.value for c in Comparison])
                or "use lt, gt, lte, gte, eq or neq",
            )

    return check


def _required(code: str, message: str, hint: str | None = None) -> Problem:
    """A missing field, reported at the anchor the caller gives (a trigger's name, its
    `condition:`), worded as the field's check words a null."""
    return Problem(code, message.replace("{kind}", kind_of(None)), hint=hint, where="anchor")


# A trigger's own fields; missing ones are reported at the trigger's name.
TRIGGER = Shape(
    (
        Field(
            "event_type",
            _event_type,
            default=None,  # checked like a null: "has no event_type", at the trigger's name
        ),
        Field(
            "metric",
            _metric,
            missing=_required(
                codes.BAD_METRIC,
                "{what}: metric must be '<measurement>.<field>', got {kind}",
                "for example 'metric: sr_requests.response_time'",
            ),
        ),
    ),
    allowed=TRIGGER_KEYS,
)
_THRESHOLD = Field(
    "threshold",
    _threshold,
    missing=_required(
        codes.BAD_TRIGGER,
        "{what}: condition.threshold must be a number, got {kind}",
        "for example 'threshold: 100'",
    ),
)
_GRANULARITY = Field(
    "granularity",
    _seconds,
    missing=_required(
        codes.BAD_TRIGGER,
        "{what}: granularity must be a positive number of seconds (or a time like '30 s'), "
        "got {kind}",
        "for example 'granularity: 10'",
    ),
)
_AGGREGATION = Field("aggregation_method", _aggregation, default="mean")


def _condition_shape(deadman: bool) -> Shape:
    """An alert's condition; missing fields are reported at the trigger's `condition:`."""
    comparison = Field("comparison_operator", _comparison(not deadman), default=None)
    return Shape((_THRESHOLD, _GRANULARITY, _AGGREGATION, comparison), allowed=_CHECKED_BY_CALLER)


CONDITION = _condition_shape(deadman=False)
DEADMAN_CONDITION = _condition_shape(deadman=True)
PERIOD = Shape((Field("period", _seconds),), allowed=_CHECKED_BY_CALLER)
