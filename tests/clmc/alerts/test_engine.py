"""The streaming alert engine (CLMC-19..22): windows by time, tag filters, levels, events only
on level changes, deadman and relative rules, late points. The clock is an explicit value so
that window boundaries are exact."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.clmc.alerts.engine import AlertEngine, Level, rules_from_dicts
from flame.clmc.alerts.window import Window
from flame.tosca.model import AlertRule, Comparison, EventType

S = 1_000_000_000
T0 = 1_800_000_000 * S  # a whole number of seconds: windows start on it


def rule(**kw: object) -> AlertRule:
    base: dict[str, object] = {
        "name": "slow",
        "policy": "scale",
        "event_type": EventType.THRESHOLD,
        "measurement": "sr_fqdn",
        "field": "response_time",
        "threshold": 100.0,
        "granularity_s": 2.0,
        "aggregation": "mean",
        "comparison": Comparison.GT,
        "tags": (("fqdn", "vod.example"),),
        "notify_sfemc": True,
    }
    base.update(kw)
    return AlertRule(**base)  # type: ignore[arg-type]


def batch(times: list[int], values: list[float], fqdn: str = "vod.example") -> pa.Table:
    return pa.table(
        {
            "time": pa.array(times, pa.int64()),
            "fqdn": pa.array([fqdn] * len(times)),
            "sr": pa.array(["sr-ue-1"] * len(times)),
            "response_time": pa.array(values, pa.float64()),
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> AlertEngine:
    e = AlertEngine(lateness_s=0.5, clock=clock)
    e.set_rules("acme", "vod", "vod-1", [rule()])
    return e


def test_fires_once_when_the_mean_crosses_and_recovers_once(engine: AlertEngine) -> None:
    engine.observe("flame", "sr_fqdn", batch([T0, T0 + S], [50.0, 70.0]))
    assert engine.tick(T0 + 2 * S + S // 2) == []  # mean 60: ok, and ok is no news
    engine.observe("flame", "sr_fqdn", batch([T0 + 2 * S, T0 + 3 * S], [150.0, 250.0]))
    (fired,) = engine.tick(T0 + 4 * S + S // 2)
    assert fired.level == Level.CRITICAL
    assert fired.previous_level == Level.OK
    assert fired.value == 200.0
    assert fired.time_ns == T0 + 4 * S
    assert fired.emitted_ns == T0 + 4 * S + S // 2  # judged at the tick after end + lateness
    assert (fired.tenant, fired.sfc, fired.sfci, fired.alert, fired.policy) == (
        "acme",
        "vod",
        "vod-1",
        "slow",
        "scale",
    )
    assert "mean(sr_fqdn.response_time, fqdn=vod.example) over 2s is 200" in fired.message
    engine.observe("flame", "sr_fqdn", batch([T0 + 4 * S], [300.0]))
    assert engine.tick(T0 + 6 * S + S // 2) == []  # still critical: no second event
    engine.observe("flame", "sr_fqdn", batch([T0 + 6 * S], [10.0]))
    (recovered,) = engine.tick(T0 + 8 * S + S // 2)
    assert recovered.level == Level.OK
    assert recovered.previous_level == Level.CRITICAL
    assert recovered.id != fired.id
    assert recovered.duration_ns == 4 * S  # critical from the end of [2 s, 4 s) to 8 s


def test_a_window_is_judged_only_after_its_end_plus_lateness(engine: AlertEngine) -> None:
    engine.observe("flame", "sr_fqdn", batch([T0], [500.0]))
    assert engine.tick(T0 + 2 * S) == []  # over, but stragglers may still come
    engine.observe("flame", "sr_fqdn", batch([T0 + S], [0.0]))  # a straggler: mean 250
    (event,) = engine.tick(T0 + 2 * S + S // 2)
    assert event.value == 250.0
    engine.observe("flame", "sr_fqdn", batch([T0 + S], [1.0]))  # too late now
    assert engine.rules()[0][2] == Level.CRITICAL
    assert engine._states[engine.rules()[0][0]].late_points == 1


def test_only_rows_with_the_rules_tags_count(engine: AlertEngine) -> None:
    engine.observe("flame", "sr_fqdn", batch([T0], [1000.0], fqdn="other.example"))
    engine.observe("other-db", "sr_fqdn", batch([T0], [1000.0]))
    engine.observe("flame", "sr_requests", batch([T0], [1000.0]))
    engine.observe("flame", "sr_fqdn", batch([T0], [20.0]))
    assert engine.tick(T0 + 3 * S) == []  # only the 20 counted


def test_one_batch_spanning_windows_is_split(engine: AlertEngine) -> None:
    times = [T0, T0 + S, T0 + 2 * S, T0 + 3 * S]
    engine.observe("flame", "sr_fqdn", batch(times, [10.0, 10.0, 500.0, 700.0]))
    (event,) = engine.tick(T0 + 5 * S)
    assert event.value == 600.0
    assert event.time_ns == T0 + 4 * S


def test_deadman_fires_on_silence_and_recovers_on_data(clock: Clock) -> None:
    engine = AlertEngine(lateness_s=0.5, clock=clock)
    engine.set_rules(
        "acme",
        "vod",
        "vod-1",
        [rule(name="silent", event_type=EventType.DEADMAN, threshold=1.0, comparison=None)],
    )
    engine.observe("flame", "sr_fqdn", batch([T0], [1.0]))
    assert engine.tick(T0 + 2 * S + S // 2) == []
    (silent,) = engine.tick(T0 + 4 * S + S // 2)  # the window [2 s, 4 s) had no point
    assert silent.level == Level.CRITICAL
    assert silent.value == 0.0
    engine.observe("flame", "sr_fqdn", batch([T0 + 4 * S], [1.0]))
    (back,) = engine.tick(T0 + 6 * S + S // 2)
    assert back.level == Level.OK


def test_a_sum_deadman_counts_requests_not_reports(clock: Clock) -> None:
    """Issue 14 item 4: after a release an SR reported one idle interval (requests=0, a
    switch), the deadman counted one point and flapped CRITICAL, OK, CRITICAL."""
    engine = AlertEngine(lateness_s=0.5, clock=clock)
    quiet = rule(
        name="quiet",
        event_type=EventType.DEADMAN,
        field="response_time",  # the batch's one field; stands for `requests` here
        threshold=1.0,
        aggregation="sum",
        comparison=None,
    )
    engine.set_rules("acme", "vod", "vod-1", [quiet])
    engine.observe("flame", "sr_fqdn", batch([T0], [3.0]))  # three requests
    assert engine.tick(T0 + 2 * S + S // 2) == []
    engine.observe("flame", "sr_fqdn", batch([T0 + 2 * S], [0.0]))  # a report of no request
    (silent,) = engine.tick(T0 + 4 * S + S // 2)
    assert silent.level == Level.CRITICAL
    assert silent.value == 0.0
    assert "sum(sr_fqdn.response_time, fqdn=vod.example) over 2s is 0" in silent.message
    engine.observe("flame", "sr_fqdn", batch([T0 + 4 * S], [0.0]))  # still nobody
    assert engine.tick(T0 + 6 * S + S // 2) == []  # no flap back to OK
    engine.observe("flame", "sr_fqdn", batch([T0 + 6 * S], [2.0]))
    (back,) = engine.tick(T0 + 8 * S + S // 2)
    assert back.level == Level.OK


def test_relative_compares_with_the_previous_window(clock: Clock) -> None:
    engine = AlertEngine(lateness_s=0.5, clock=clock)
    engine.set_rules(
        "acme",
        "vod",
        "vod-1",
        [rule(name="jump", event_type=EventType.RELATIVE, threshold=50.0)],
    )
    engine.observe("flame", "sr_fqdn", batch([T0, T0 + 2 * S], [100.0, 140.0]))
    assert engine.tick(T0 + 4 * S + S // 2) == []  # +40 %
    engine.observe("flame", "sr_fqdn", batch([T0 + 4 * S], [280.0]))
    (event,) = engine.tick(T0 + 6 * S + S // 2)
    assert event.value == pytest.approx(100.0)  # 140 -> 280


def test_no_data_is_no_verdict_for_threshold_rules(engine: AlertEngine) -> None:
    assert engine.tick(T0 + 100 * S) == []
    assert engine.rules()[0][2] == Level.OK


def test_rules_are_replaced_per_instance_and_unchanged_ones_keep_their_level(
    engine: AlertEngine,
) -> None:
    engine.observe("flame", "sr_fqdn", batch([T0], [500.0]))
    assert len(engine.tick(T0 + 3 * S)) == 1
    engine.set_rules("acme", "vod", "vod-1", [rule(), rule(name="other", threshold=5.0)])
    levels = {key.name: level for key, _, level in engine.rules()}
    assert levels == {"other": Level.OK, "slow": Level.CRITICAL}
    engine.set_rules("acme", "vod", "vod-1", [rule(threshold=1000.0)])
    assert [(k.name, level) for k, _, level in engine.rules()] == [("slow", Level.OK)]
    assert engine.remove_rules("acme", "vod") == 1
    assert engine.rules() == []


def test_rules_from_the_service_model_dict_form() -> None:
    from flame.tosca.model import ServiceModel

    original = rule(webhooks=("http://127.0.0.1:1/hook",))
    model = ServiceModel("vod", "vod-1", "", (), (), (), (), (original,))
    (back,) = rules_from_dicts(model.to_dict()["alert_rules"])
    assert back == original


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200)
@given(st.lists(finite, min_size=2, max_size=60), st.integers(1, 99))
def test_window_aggregates_match_reference_computations(values: list[float], pct: int) -> None:
    times = np.arange(len(values), dtype=np.int64) * 7919 % len(values)  # a shuffle (7919 is prime)
    window = Window(0, S, keep_values=True)
    half = len(values) // 2
    window.add(times[:half], np.array(values[:half]))
    window.add(times[half:], np.array(values[half:]))
    by_time = [v for _, v in sorted(zip(times.tolist(), values, strict=True), key=lambda p: p[0])]
    expected = {
        "count": float(len(values)),
        "mean": statistics.fmean(values),
        "sum": math.fsum(values),
        "min": min(values),
        "max": max(values),
        "spread": max(values) - min(values),
        "first": by_time[0],
        "last": by_time[-1],
        "median": statistics.median(values),
        "stddev": statistics.stdev(values),
        f"percentile_{pct}": sorted(values)[max(1, math.ceil(pct / 100 * len(values))) - 1],
    }
    for aggregation, want in expected.items():
        got = window.aggregate(aggregation)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-3), aggregation
    counts = {v: values.count(v) for v in values}
    assert window.aggregate("mode") == min(v for v in counts if counts[v] == max(counts.values()))


# -- sliding windows ----------------------------------------------------------------------------


def sliding_engine(clock: Clock, *rules: AlertRule) -> AlertEngine:
    clock.now = T0 - 10 * S  # the rules exist well before the data
    engine = AlertEngine(lateness_s=0.5, clock=clock, sliding=True)
    engine.set_rules("acme", "vod", "vod-1", list(rules) or [rule(granularity_s=3.0)])
    return engine


def test_sliding_sees_a_breach_lateness_after_it_lands(clock: Clock) -> None:
    engine = sliding_engine(clock)
    engine.observe("flame", "sr_fqdn", batch([T0 - 2 * S, T0 - S], [10.0, 10.0]))
    assert engine.tick(T0 + S // 2) == []  # the last 3 s: 10 and 10
    engine.observe("flame", "sr_fqdn", batch([T0 + S], [500.0]))
    (fired,) = engine.tick(T0 + S + S // 2 + S // 10)  # [T0-1.9 s, T0+1.1 s): 10 and 500
    assert fired.level == Level.CRITICAL
    assert fired.value == pytest.approx(255.0)
    assert fired.time_ns == T0 + S + S // 10
    assert engine.tick(T0 + S + S // 2 + S // 10) == []  # the same instant twice: one verdict
    # The breach slides out of the window 3 s later: recovered (no data is no verdict, so
    # fast responses must keep coming).
    engine.observe("flame", "sr_fqdn", batch([T0 + 2 * S, T0 + 3 * S, T0 + 4 * S], [5.0] * 3))
    (recovered,) = engine.tick(T0 + 5 * S)
    assert recovered.level == Level.OK


def test_sliding_gives_no_verdict_on_time_before_the_rule(clock: Clock) -> None:
    clock.now = T0
    engine = AlertEngine(lateness_s=0.5, clock=clock, sliding=True)
    engine.set_rules(
        "acme",
        "vod",
        "vod-1",
        [rule(name="silent", event_type=EventType.DEADMAN, comparison=None, threshold=1.0)],
    )
    assert engine.tick(T0 + S) == []  # the window would start before the rule existed
    (silent,) = engine.tick(T0 + 2 * S + S // 2 + 1)  # 2 s of silence since the rule
    assert silent.level == Level.CRITICAL
    engine.observe("flame", "sr_fqdn", batch([T0 + 3 * S], [1.0]))
    (back,) = engine.tick(T0 + 3 * S + S // 2 + 1)
    assert back.level == Level.OK


def test_relative_rules_stay_on_aligned_windows_when_sliding(clock: Clock) -> None:
    engine = sliding_engine(clock, rule(name="jump", event_type=EventType.RELATIVE, threshold=50.0))
    engine.observe("flame", "sr_fqdn", batch([T0, T0 + 2 * S], [100.0, 300.0]))
    (event,) = engine.tick(T0 + 4 * S + S // 2)
    assert event.value == pytest.approx(200.0)  # window [2 s, 4 s) against [0, 2 s)


def test_warning_level_between_ok_and_critical(clock: Clock) -> None:
    engine = AlertEngine(lateness_s=0.5, clock=clock)
    engine.set_rules("acme", "vod", "vod-1", [rule(threshold=100.0, warning_threshold=50.0)])
    steps = [(T0, 60.0), (T0 + 2 * S, 150.0), (T0 + 4 * S, 70.0), (T0 + 6 * S, 10.0)]
    levels = []
    for t, v in steps:
        engine.observe("flame", "sr_fqdn", batch([t], [v]))
        levels += [(e.previous_level, e.level) for e in engine.tick(t + 2 * S + S // 2)]
    assert levels == [
        (Level.OK, Level.WARNING),
        (Level.WARNING, Level.CRITICAL),
        (Level.CRITICAL, Level.WARNING),
        (Level.WARNING, Level.OK),
    ]
