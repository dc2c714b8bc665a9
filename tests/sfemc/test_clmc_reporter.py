"""Configuration and decision events as line protocol (CLMC-4, CLMC-5), parsed back with the
CLMC's own parser: tags, state durations (this visit, sum, mean) and the cluster's place."""

from __future__ import annotations

from flame.clmc.lineproto import parse
from flame.sfemc.clmc_reporter import Place, _StateTimes, config_line, decision_line
from flame.sfemc.events import ConfigEvent, DecisionEvent


def rows(line: str) -> list[dict[str, object]]:
    result = parse(line.encode(), precision="n")
    assert not result.errors, result.errors
    return [row for batch in result.batches for row in batch.table.to_pylist()]


def test_config_events_carry_durations_and_place() -> None:
    times = _StateTimes()
    event = ConfigEvent(
        "edge-bristol",
        "vod",
        "vod-demo",
        "cache",
        "vod-demo.cache.edge-bristol",
        "booted",
        "connecting",
        1_800_000_000.5,
        12.5,
        "alert vod_slow fired",
        tenant="acme",
    )
    total, mean = times.add(event.sfe, "booted", 12.5)
    total, mean = times.add(event.sfe, "booted", 7.5)
    line = config_line(event, total, mean, Place(51.448, -2.603, "bristol-harbour"))
    (row,) = rows(line)
    assert row["time"] == 1_800_000_000_500_000_000
    assert (row["sfc"], row["sfci"], row["sf"], row["sfe"], row["cluster"], row["location"]) == (
        "vod",
        "vod-demo",
        "cache",
        "vod-demo.cache.edge-bristol",
        "edge-bristol",
        "bristol-harbour",
    )
    assert (row["current_state"], row["previous_state"]) == ("connecting", "booted")
    assert (row["booted_s"], row["booted_sum"], row["booted_mst"]) == (12.5, 20.0, 10.0)
    assert (row["latitude"], row["longitude"]) == (51.448, -2.603)
    assert row["reason"] == "alert vod_slow fired"
    assert row["tenant"] == "acme"  # the CLMC shows a tenant its own rows of `flame` by it
    # No place known: no geolocation fields, and nothing else changes.
    (bare,) = rows(config_line(event, 12.5, 12.5))
    assert "latitude" not in bare
    assert "location" not in bare


def test_decision_events_escape_what_they_quote() -> None:
    event = DecisionEvent(
        "ev-1",
        "vod",
        'slow, "really"',
        "ignored",
        'said "no"\nthen',
        1.0,
        ("a: connected", "b: booted"),
        tenant="acme",
    )
    (row,) = rows(decision_line(event))
    assert row["tenant"] == "acme"
    assert row["alert"] == 'slow, "really"'
    assert row["decision"] == "ignored"
    assert row["reason"] == 'said "no" then'
    assert row["changes"] == "a: connected; b: booted"
