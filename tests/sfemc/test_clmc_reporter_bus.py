"""The SFEMC's CLMC reporter on its event bus (CLMC-4, CLMC-5) against a real CLMC: lifecycle
and decision events become points that are sent and counted, `close()` unsubscribes it, and a
CLMC that is away costs counted drops, never an error. Its counters, `flush()` and `close()`
come from `flame.common.clmc_client.ThreadedReporter`, shared with the VIM's metrics reporter
(issue 18: one reporter plumbing)."""

from __future__ import annotations

from pathlib import Path

from flame.common.ports import free_port
from flame.sfemc.clmc_reporter import ClmcReporter
from flame.sfemc.events import (
    CONFIG_TOPIC,
    DECISION_TOPIC,
    ConfigEvent,
    DecisionEvent,
    InProcessBus,
)

from .test_vim_metrics import _Clmc


def config_event(time_s: float = 1_800_000_000.0) -> ConfigEvent:
    return ConfigEvent(
        "c1", "vod", "vod-demo", "cache", "vod-demo.cache.c1", "booted", "connecting", time_s, 2.5
    )


def test_clmc4_clmc5_bus_events_reach_the_clmc_and_are_counted(tmp_path: Path) -> None:
    bus = InProcessBus()
    with _Clmc(tmp_path / "clmc") as clmc:
        # A long interval: what reaches the CLMC here is sent by flush().
        reporter = ClmcReporter(bus, clmc.url, None, interval_s=60)
        try:
            bus.publish(CONFIG_TOPIC, config_event())
            decision = DecisionEvent(
                "ev-1", "vod", "vod_slow", "applied", "p95 over 200 ms", 1.8e9, ("cache: booted",)
            )
            bus.publish(DECISION_TOPIC, decision)
            assert reporter.backlog == 2
            assert reporter.flush() is True
            assert (reporter.sent, reporter.dropped, reporter.backlog) == (2, 0, 0)
        finally:
            reporter.close()
        # Unsubscribed: a later event is not queued (nor does publishing it fail).
        bus.publish(CONFIG_TOPIC, config_event(1_800_000_001.0))
        assert (reporter.sent, reporter.backlog) == (2, 0)
        states = clmc.query('SELECT "current_state", "previous_state" FROM "endpoint_config"')
        assert [row[1:] for row in states] == [["connecting", "booted"]]
        decisions = clmc.query('SELECT "event_id" FROM "sfemc_decision"')
        assert [row[1] for row in decisions] == ["ev-1"]


def test_a_clmc_that_is_away_costs_counted_drops_only() -> None:
    bus = InProcessBus()
    reporter = ClmcReporter(
        bus, f"http://127.0.0.1:{free_port()}", None, interval_s=60, max_backlog=2
    )
    try:
        for i in range(5):
            bus.publish(CONFIG_TOPIC, config_event(1_800_000_000.0 + i))
            assert reporter.backlog <= 2  # bounded: the oldest go first
        assert reporter.flush() is False  # nothing listens
    finally:
        reporter.close()
    # Every event is accounted for: pushed out of the backlog, or unsent at close.
    assert (reporter.sent, reporter.dropped, reporter.backlog) == (0, 5, 0)
