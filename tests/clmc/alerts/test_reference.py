"""The alert engine against a brute-force reference (CLMC-19..22): random series, random rules,
random batch splits. The reference recomputes every window from all the points with plain
Python; the engine folds batches incrementally. Their level changes must be the same."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import pyarrow as pa  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.clmc.alerts.engine import AlertEngine, AlertEvent, Level
from flame.tosca.model import AlertRule, Comparison, EventType

S = 1_000_000_000
T0 = 1_800_000_000 * S
AGGREGATIONS = ("mean", "sum", "count", "min", "max", "first", "last", "spread", "median")


def reference(values_by_time: list[tuple[int, float]], aggregation: str) -> float | None:
    if aggregation == "count":
        return float(len(values_by_time))
    if not values_by_time:
        return None
    ordered = sorted(values_by_time)
    values = [v for _, v in ordered]
    return {
        "mean": lambda: statistics.fmean(values),
        "sum": lambda: math.fsum(values),
        "min": lambda: min(values),
        "max": lambda: max(values),
        "first": lambda: values[0],
        "last": lambda: values[-1],
        "spread": lambda: max(values) - min(values),
        "median": lambda: statistics.median(values),
    }[aggregation]()


# On a quarter-second grid: points often sit exactly on window boundaries.
points = st.lists(
    st.tuples(st.integers(0, 79).map(lambda k: k * S // 4), st.integers(-500, 500).map(float)),
    min_size=0,
    max_size=40,
    unique_by=lambda p: p[0],
)


def batches(draw_points: list[tuple[int, float]], cuts: list[int]) -> list[pa.Table]:
    out, start = [], 0
    for cut in [*sorted(c % (len(draw_points) + 1) for c in cuts), len(draw_points)]:
        chunk = draw_points[start:cut]
        if chunk:
            out.append(
                pa.table(
                    {
                        "time": pa.array([T0 + t for t, _ in chunk], pa.int64()),
                        "fqdn": ["x"] * len(chunk),
                        "v": pa.array([v for _, v in chunk], pa.float64()),
                    }
                )
            )
        start = max(start, cut)
    return out


def make_rule(aggregation: str, comparison: Comparison, threshold: float, g: int) -> AlertRule:
    return AlertRule(
        name="r",
        policy="p",
        event_type=EventType.THRESHOLD,
        measurement="m",
        field="v",
        threshold=threshold,
        granularity_s=float(g),
        aggregation=aggregation,
        comparison=comparison,
        tags=(("fqdn", "x"),),
    )


def levels_of(events: Sequence[AlertEvent]) -> list[tuple[int, str]]:
    return [(e.time_ns, e.level) for e in events]


def expected_changes(
    judged: list[tuple[int, float | None]], rule: AlertRule
) -> list[tuple[int, str]]:
    level, changes = Level.OK, []
    for end, value in judged:
        if value is None:
            continue  # no data: no verdict
        assert rule.comparison is not None
        assert rule.threshold is not None
        now = Level.CRITICAL if rule.comparison.holds(value, rule.threshold) else Level.OK
        if now != level:
            changes.append((end, now))
            level = now
    return changes


@settings(max_examples=150, deadline=None)
@given(
    points,
    st.lists(st.integers(0, 100), max_size=4),
    st.sampled_from(AGGREGATIONS),
    st.sampled_from(list(Comparison)),
    st.integers(-100, 300).map(float),
    st.integers(1, 4),
)
def test_aligned_windows_match_the_reference(
    series: list[tuple[int, float]],
    cuts: list[int],
    aggregation: str,
    comparison: Comparison,
    threshold: float,
    g: int,
) -> None:
    rule = make_rule(aggregation, comparison, threshold, g)
    engine = AlertEngine(lateness_s=0.5, clock=lambda: T0)
    engine.set_rules("t", "c", "i", [rule])
    for table in batches(sorted(series), cuts):  # in time order: no point is late
        engine.observe("flame", "m", table)
    got = levels_of(engine.tick(T0 + 30 * S))
    g_ns = g * S
    judged = []
    for index in range(0, 30 * S // g_ns):
        start, end = index * g_ns, (index + 1) * g_ns
        if T0 + end + S // 2 > T0 + 30 * S:
            break
        inside = [(t, v) for t, v in series if start <= t < end]
        judged.append((T0 + end, reference(inside, aggregation)))
    assert got == expected_changes(judged, rule)


@settings(max_examples=150, deadline=None)
@given(
    points,
    st.lists(st.integers(0, 100), max_size=4),
    st.sampled_from(AGGREGATIONS),
    st.sampled_from(list(Comparison)),
    st.integers(-100, 300).map(float),
    st.integers(1, 4),
    st.lists(st.integers(1, 40), min_size=1, max_size=12, unique=True),
)
def test_sliding_windows_match_the_reference(
    series: list[tuple[int, float]],
    cuts: list[int],
    aggregation: str,
    comparison: Comparison,
    threshold: float,
    g: int,
    ticks: list[int],
) -> None:
    rule = make_rule(aggregation, comparison, threshold, g)
    engine = AlertEngine(lateness_s=0.5, clock=lambda: T0 - 10 * S, sliding=True)
    engine.set_rules("t", "c", "i", [rule])
    for table in batches(sorted(series), cuts):
        engine.observe("flame", "m", table)
    got: list[tuple[int, str]] = []
    judged = []
    for tick in sorted(ticks):
        now = T0 + tick * S // 2  # every half second of the series, some skipped
        got += levels_of(engine.tick(now))
        end = now - S // 2 - T0
        inside = [(t, v) for t, v in series if end - g * S <= t < end]
        judged.append((now - S // 2, reference(inside, aggregation)))
    assert got == expected_changes(judged, rule)
