"""Issue 11, finding 4: a tenant's alert rule on the platform database reads only its own rows.

Before the fix, a rule of acme on `sr_fqdn` (without an fqdn filter, or with another tenant's
FQDN in it) aggregated every tenant's traffic, and its events told acme about globex's service.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from flame.clmc.alerts.engine import AlertEngine, Level
from flame.clmc.store.base import FIELD, KIND_KEY, TAG
from flame.tosca.model import AlertRule, Comparison, EventType

S = 1_000_000_000
T0 = 1_800_000_000 * S


def delegations() -> Any:
    # imported here, so that the module loads on the code before the fix and its first test
    # shows the leak there rather than an ImportError
    from flame.clmc.tenancy import DelegationMap

    return DelegationMap({"x.example": "acme", "y.example": "globex"})


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
        "tags": (),
        "notify_sfemc": True,
    }
    base.update(kw)
    return AlertRule(**base)  # type: ignore[arg-type]


def batch(rows: list[tuple[int, str, float]]) -> pa.Table:
    return pa.table(
        {
            "time": pa.array([t for t, _, _ in rows], pa.int64()),
            "fqdn": pa.array([f for _, f, _ in rows]),
            "response_time": pa.array([v for _, _, v in rows], pa.float64()),
        }
    )


class Scopes:
    """tenant -> its rows of `flame`; `known` False plays the PCE being unreachable."""

    def __init__(self) -> None:
        self.known = True
        self.map: Any = None

    def __call__(self, tenant: str) -> Any:
        if self.map is None:
            self.map = delegations()
        return self.map.scope_of(tenant) if self.known else None


@pytest.fixture
def scopes() -> Scopes:
    return Scopes()


@pytest.fixture
def engine(scopes: Scopes) -> AlertEngine:
    e = AlertEngine(lateness_s=0.5, clock=lambda: T0)
    e.scopes = scopes
    return e


def test_a_tenant_rule_never_reads_another_tenants_traffic(engine: AlertEngine) -> None:
    engine.set_rules("acme", "vod", "vod-1", [rule()])  # no fqdn filter: "all my traffic"
    engine.set_rules("acme", "spy", "spy-1", [rule(tags=(("fqdn", "y.example"),))])
    engine.observe("flame", "sr_fqdn", batch([(T0, "x.example", 20.0), (T0, "y.example", 900.0)]))
    assert engine.tick(T0 + 2 * S + S // 2) == []  # acme's own mean is 20; globex's unseen
    engine.observe("flame", "sr_fqdn", batch([(T0 + 2 * S, "cdn.x.example", 300.0)]))
    (event,) = engine.tick(T0 + 4 * S + S // 2)
    assert (event.sfc, event.level, event.value) == ("vod", Level.CRITICAL, 300.0)


def test_other_databases_and_the_open_mode_are_not_narrowed(scopes: Scopes) -> None:
    engine = AlertEngine(lateness_s=0.5, clock=lambda: T0)  # no scopes: the open mode
    engine.set_rules("acme", "vod", "vod-1", [rule()])
    engine.observe("flame", "sr_fqdn", batch([(T0, "y.example", 900.0)]))
    assert len(engine.tick(T0 + 2 * S + S // 2)) == 1
    engine = AlertEngine(lateness_s=0.5, clock=lambda: T0)
    engine.scopes = scopes
    engine.set_rules("acme", "vod", "vod-1", [rule()], database="acme_metrics")
    engine.observe("acme_metrics", "sr_fqdn", batch([(T0, "anything", 900.0)]))
    assert len(engine.tick(T0 + 2 * S + S // 2)) == 1  # its own database: every row


def test_while_the_delegations_are_unknown_a_rule_is_blind_and_says_nothing(
    engine: AlertEngine, scopes: Scopes
) -> None:
    # A deadman rule would read "no points" as silence and fire: it must give no verdict.
    engine.set_rules(
        "acme", "vod", "vod-1", [rule(event_type=EventType.DEADMAN, threshold=1.0, comparison=None)]
    )
    engine.observe("flame", "sr_fqdn", batch([(T0, "x.example", 1.0)]))
    assert engine.tick(T0 + 2 * S + S // 2) == []  # a point: ok
    scopes.known = False
    engine.observe("flame", "sr_fqdn", batch([(T0 + 2 * S, "x.example", 1.0)]))
    for k in range(3, 12):
        assert engine.tick(T0 + k * S + S // 2) == []
    scopes.known = True  # back: the rule starts afresh, as a new one
    restart = T0 + 12 * S + S // 2
    assert engine.tick(restart) == []
    engine.observe("flame", "sr_fqdn", batch([(T0 + 12 * S + S // 2 + 1, "x.example", 1.0)]))
    assert engine.tick(T0 + 15 * S + S // 2) == []  # its first full window has a point
    (event,) = engine.tick(T0 + 17 * S + S // 2)  # a window really silent: fires
    assert event.level == Level.CRITICAL


def test_visible_rows_follows_the_query_compilers_rule() -> None:
    from flame.clmc.alerts.engine import visible_rows

    acme = delegations().scope_of("acme")
    both = pa.table(
        {
            "fqdn": pa.array(["x.example", "eu.x.example", "y.example", None, "x.example"]),
            "tenant": pa.array(["acme", "acme", "acme", "acme", "globex"]),
        }
    )
    assert visible_rows(both, acme).to_pylist() == [True, True, False, False, False]  # type: ignore[union-attr]
    neither = pa.table({"host": pa.array(["h1"]), "v": pa.array([1.0])})
    assert visible_rows(neither, acme) is False
    # a field named like the tag is not the tag
    fields_only = pa.Table.from_arrays(
        [pa.array(["x.example"])],
        schema=pa.schema([pa.field("fqdn", pa.string(), metadata={KIND_KEY: FIELD})]),
    )
    assert visible_rows(fields_only, acme) is False
    tagged = pa.Table.from_arrays(
        [pa.array(["x.example", "y.example"])],
        schema=pa.schema([pa.field("fqdn", pa.string(), metadata={KIND_KEY: TAG})]),
    )
    assert visible_rows(tagged, acme).to_pylist() == [True, False]  # type: ignore[union-attr]
