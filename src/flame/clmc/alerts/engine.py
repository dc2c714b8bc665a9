"""The streaming alert engine (CLMC-19..22).

Rules come from service templates (`flame.tosca.model.AlertRule`), handed over by the
orchestrator per service function chain instance. `observe` folds each ingested batch into the
open window of every rule on that measurement (a filter and a few numpy reductions); `tick`
closes windows by wall clock (with `lateness_s` for stragglers), evaluates them and returns the
events: only level changes (ok -> critical fires, critical -> ok recovers), so a handler sees
one event per incident, not one per window.

Rules read only what their tenant may query (issue 11). With `scopes` set (the CLMC sets it when
it checks tokens), a rule on the platform database `flame` folds only the points its tenant may
read there (`RowScope`: its FQDNs, its tenant tag); while its tenant's rows are unknown (the
delegations not read yet, or stale) the rule sees nothing and gives no verdict, and once they
are known again it starts afresh, as a new rule does, so that the gap never reads as silence to
a deadman rule.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc.alerts.window import Window, needs_values
from flame.clmc.influxql.scope import FQDN_TAG, TENANT_TAG, RowScope
from flame.clmc.store.base import KIND_KEY, TAG
from flame.tosca.model import AlertRule, EventType

__all__ = ["AlertEngine", "AlertEvent", "Level", "RuleKey"]

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "flame"


class Level:
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True, order=True)
class RuleKey:
    tenant: str
    sfc: str
    sfci: str
    name: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A change of an alert's level; what the SFEMC and webhooks receive (as `to_dict`)."""

    id: str
    alert: str
    policy: str
    tenant: str
    sfc: str
    sfci: str
    level: str
    previous_level: str
    time_ns: int  # end of the window that changed the level
    emitted_ns: int  # when the engine judged it (window end + lateness, at the next tick)
    value: float | None  # the window's aggregate (the percent change for `relative`)
    threshold: float | None
    comparison: str | None
    aggregation: str
    event_type: str
    measurement: str
    field: str
    window_s: float
    duration_ns: int  # how long the previous level lasted
    tags: dict[str, str]
    notify_sfemc: bool
    webhooks: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alert": self.alert,
            "policy": self.policy,
            "tenant": self.tenant,
            "sfc": self.sfc,
            "sfci": self.sfci,
            "level": self.level,
            "previous_level": self.previous_level,
            "time": self.time_ns / 1e9,  # seconds since the epoch, as the SFEMC's webhook takes
            "time_rfc3339": _rfc3339(self.time_ns),
            "time_ns": self.time_ns,
            "emitted_ns": self.emitted_ns,
            "value": self.value,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "aggregation": self.aggregation,
            "event_type": self.event_type,
            "measurement": self.measurement,
            "field": self.field,
            "window_s": self.window_s,
            "tags": self.tags,
            "message": self.message,
        }

    def to_kapacitor(self) -> dict[str, Any]:
        """Kapacitor's alert JSON, for webhooks written against Kapacitor (or Chronograf)."""
        when = _rfc3339(self.time_ns)
        return {
            "id": f"{self.sfc}/{self.sfci}/{self.alert}",  # the alert, as Kapacitor's ids
            "message": self.message,
            "details": self.message,
            "time": when,
            "duration": self.duration_ns,
            "level": self.level.upper(),
            "previousLevel": self.previous_level.upper(),
            "data": {
                "series": [
                    {
                        "name": self.measurement,
                        "tags": self.tags,
                        "columns": ["time", self.aggregation],
                        "values": [[when, self.value]],
                    }
                ]
            },
        }


def _limit(rule: AlertRule, level: str) -> float:
    """The threshold a level is about (the warning one for WARNING)."""
    if level == Level.WARNING and rule.warning_threshold is not None:
        return rule.warning_threshold
    return rule.threshold if rule.threshold is not None else 0.0


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


@dataclass(slots=True)
class _RuleState:
    key: RuleKey
    rule: AlertRule
    database: str
    granularity_ns: int
    keep_values: bool
    windows: dict[int, Window] = field(default_factory=dict)
    next_index: int = 0  # the first window not yet evaluated
    level: str = Level.OK
    previous_aggregate: float | None = None
    late_points: int = 0
    sliding: bool = False
    registered_ns: int = 0
    level_since_ns: int = 0
    # Sliding rules keep the recent points (time, value chunks) instead of tumbling windows.
    recent: list[tuple[Any, Any]] = field(default_factory=list)
    last_end_ns: int = 0
    blind: bool = False  # its tenant's rows are unknown: no data, no verdict

    def restart(self, now: int) -> None:
        """Judge again from `now` on, as a rule registered now (after being blind)."""
        self.windows.clear()
        self.recent.clear()
        self.next_index = now // self.granularity_ns
        self.registered_ns = now
        self.last_end_ns = 0
        self.previous_aggregate = None

    def window(self, index: int) -> Window:
        found = self.windows.get(index)
        if found is None:
            start = index * self.granularity_ns
            found = self.windows[index] = Window(
                start, start + self.granularity_ns, keep_values=self.keep_values
            )
        return found


Clock = Callable[[], int]
Scopes = Callable[[str], RowScope | None]  # tenant -> its rows of the platform database


def _tag(batch: pa.Table, key: str) -> pa.ChunkedArray | None:
    """The tag column `key` of an ingested batch (not a field of the same name)."""
    for i, f in enumerate(batch.schema):
        if f.name == key and (f.metadata or {}).get(KIND_KEY, TAG) == TAG:
            return batch.column(i)
    return None


def visible_rows(batch: pa.Table, scope: RowScope) -> pa.ChunkedArray | pa.Array | bool:
    """Which rows of a platform-database batch `scope` may read (the query compiler's rule:
    FQDN in its zones, tenant tag its own, nothing of a batch with neither tag)."""
    fqdns, tenants = _tag(batch, FQDN_TAG), _tag(batch, TENANT_TAG)
    if fqdns is None and tenants is None:
        return False
    mask: Any = True
    if fqdns is not None:
        seen = [v for v in pc.unique(fqdns).to_pylist() if v is not None and scope.sees_fqdn(v)]
        if not seen:
            return False
        mask = pc.is_in(fqdns, value_set=pa.array(seen, fqdns.type))
    if tenants is not None:
        mine = pc.fill_null(pc.equal(tenants, scope.tenant), False)
        mask = mine if mask is True else pc.and_(mask, mine)
    return mask


class AlertEngine:
    def __init__(
        self, *, lateness_s: float = 1.0, clock: Clock = time.time_ns, sliding: bool = False
    ) -> None:
        """`sliding`: threshold and deadman rules look at the last `granularity` seconds at
        every tick (a moving window, as Kapacitor's `every`), so a breach is seen about
        `lateness` after it lands instead of at the end of an aligned window; relative rules
        compare consecutive aligned windows either way."""
        self.lateness_ns = int(lateness_s * 1e9)
        self.clock = clock
        self.sliding = sliding
        # Set by the CLMC when it checks tokens: the rows of `shared` each tenant may read.
        # None: rules read every row (the open mode, and the engine on its own).
        self.scopes: Scopes | None = None
        self.shared = DEFAULT_DATABASE
        self._states: dict[RuleKey, _RuleState] = {}
        self._by_measurement: dict[tuple[str, str], list[_RuleState]] = {}
        self.evaluations = 0

    # -- rules ------------------------------------------------------------------------------------

    def set_rules(
        self,
        tenant: str,
        sfc: str,
        sfci: str,
        rules: Iterable[AlertRule],
        *,
        database: str = DEFAULT_DATABASE,
    ) -> list[RuleKey]:
        """Replace the rules of one chain instance; an unchanged rule keeps its level."""
        now = self.clock()
        wanted: dict[RuleKey, AlertRule] = {RuleKey(tenant, sfc, sfci, r.name): r for r in rules}
        for key in [k for k in self._states if (k.tenant, k.sfc, k.sfci) == (tenant, sfc, sfci)]:
            if key not in wanted or self._states[key].rule != wanted[key]:
                del self._states[key]
        for key, rule in wanted.items():
            if key in self._states and self._states[key].database == database:
                continue
            granularity_ns = max(1, int(rule.granularity_s * 1e9))
            self._states[key] = _RuleState(
                key=key,
                rule=rule,
                database=database,
                granularity_ns=granularity_ns,
                keep_values=needs_values(rule.aggregation),
                next_index=now // granularity_ns,  # no verdict on windows before the rule
                sliding=self.sliding and rule.event_type is not EventType.RELATIVE,
                registered_ns=now,
                level_since_ns=now,
            )
        self._index()
        return sorted(wanted)

    def remove_rules(self, tenant: str, sfc: str, sfci: str | None = None) -> int:
        gone = [
            k
            for k in self._states
            if (k.tenant, k.sfc) == (tenant, sfc) and (sfci is None or k.sfci == sfci)
        ]
        for key in gone:
            del self._states[key]
        self._index()
        return len(gone)

    def rules(self) -> list[tuple[RuleKey, AlertRule, str]]:
        """(key, rule, current level), sorted."""
        return [(k, s.rule, s.level) for k, s in sorted(self._states.items())]

    def _index(self) -> None:
        index: dict[tuple[str, str], list[_RuleState]] = {}
        for state in self._states.values():
            index.setdefault((state.database, state.rule.measurement), []).append(state)
        self._by_measurement = index

    # -- data (the hot path) ---------------------------------------------------------------------

    def observe(self, database: str, measurement: str, batch: pa.Table) -> None:
        """Fold a batch just written to `database`.`measurement` into the open windows."""
        states = self._by_measurement.get((database, measurement))
        if not states or batch.num_rows == 0:
            return
        names = set(batch.column_names)
        scoped = self.scopes is not None and database == self.shared
        masks: dict[str, Any] = {}  # tenant -> its visible rows of this batch
        for state in states:
            rule = state.rule
            if rule.field not in names or "time" not in names:
                continue
            mask: pa.Array | None = None
            if scoped:
                tenant = state.key.tenant
                if tenant not in masks:
                    assert self.scopes is not None
                    scope = self.scopes(tenant)
                    masks[tenant] = None if scope is None else visible_rows(batch, scope)
                visible = masks[tenant]
                if visible is None:
                    state.blind = True
                    continue
                if visible is False:
                    continue
                if visible is not True:
                    mask = visible
            for tag, value in rule.tags:
                if tag not in names:
                    mask = None
                    break
                m = pc.equal(batch[tag], value)
                mask = m if mask is None else pc.and_(mask, m)
            else:
                rows = batch if mask is None else batch.filter(mask)
                self._fold(state, rows)
                continue
            # a filter on a tag the batch does not have: nothing of it matches

    def _fold(self, state: _RuleState, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        column = rows[state.rule.field]
        if not (
            pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type)
        ):
            return  # strings cannot be aggregated numerically; the template said otherwise
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        times = rows["time"].cast(pa.int64()).to_numpy(zero_copy_only=False)
        keep = ~np.isnan(values)
        if not keep.all():
            values, times = values[keep], times[keep]
        if len(values) == 0:
            return
        indexes = times // state.granularity_ns
        low, high = int(indexes.min()), int(indexes.max())
        if low == high:
            self._add(state, low, times, values)
            return
        for index in np.unique(indexes):
            sel = indexes == index
            self._add(state, int(index), times[sel], values[sel])

    def _add(self, state: _RuleState, index: int, times: Any, values: Any) -> None:
        if state.sliding:
            state.recent.append((times, values))
            return
        if index < state.next_index:
            state.late_points += len(values)  # its window was already judged
            return
        state.window(index).add(times, values)

    # -- evaluation -------------------------------------------------------------------------------

    def tick(self, now_ns: int | None = None) -> list[AlertEvent]:
        """Judge every window that is over (end + lateness <= now); return level changes."""
        now = self.clock() if now_ns is None else now_ns
        events: list[AlertEvent] = []
        for state in list(self._states.values()):
            if self.scopes is not None and state.database == self.shared:
                if self.scopes(state.key.tenant) is None:
                    state.blind = True
                    continue
                if state.blind:
                    state.blind = False
                    state.restart(now)
                    continue
            if state.sliding:
                event = self._slide(state, now)
                if event is not None:
                    events.append(event)
                continue
            due = (now - self.lateness_ns) // state.granularity_ns  # windows before this are over
            while state.next_index < due:
                index = state.next_index
                window = state.windows.pop(index, None)
                if window is None:
                    start = index * state.granularity_ns
                    window = Window(start, start + state.granularity_ns, keep_values=False)
                state.next_index = index + 1
                event = self._judge(state, window, now)
                if event is not None:
                    events.append(event)
        return events

    def _slide(self, state: _RuleState, now: int) -> AlertEvent | None:
        end = now - self.lateness_ns
        start = end - state.granularity_ns
        if start < state.registered_ns or end <= state.last_end_ns:
            return None  # no verdict on time before the rule existed
        state.last_end_ns = end
        window = Window(start, end, keep_values=state.keep_values)
        kept = []
        for times, values in state.recent:
            if len(times) == 0 or int(times.max()) < start:
                continue  # entirely before the window: gone for good
            kept.append((times, values))
            inside = (times >= start) & (times < end)
            if inside.all():
                window.add(times, values)
            elif inside.any():
                window.add(times[inside], values[inside])
        state.recent = kept
        return self._judge(state, window, now)

    def _judge(self, state: _RuleState, window: Window, now: int) -> AlertEvent | None:
        rule = state.rule
        self.evaluations += 1
        if rule.event_type is EventType.DEADMAN:
            # Silence is fewer than `threshold` points, or with `aggregation_method: sum` a sum
            # of the field below it (requests, not reports: an SR's report of an idle interval
            # with requests=0 is no sign of life).
            value: float | None = (
                window.aggregate("sum") or 0.0 if rule.aggregation == "sum" else float(window.count)
            )
            threshold = rule.threshold if rule.threshold is not None else 1.0
            firing = value is not None and value < threshold
        else:
            aggregate = window.aggregate(rule.aggregation)
            if rule.event_type is EventType.RELATIVE:
                previous, state.previous_aggregate = state.previous_aggregate, aggregate
                if aggregate is None or previous is None or previous == 0:
                    return None
                value = (aggregate - previous) / abs(previous) * 100.0
            else:
                value = aggregate
            if value is None or rule.comparison is None or rule.threshold is None:
                return None  # no data: no verdict (deadman rules are for silence)
            firing = rule.comparison.holds(value, rule.threshold)
            warning = rule.warning_threshold
            if not firing and warning is not None and rule.comparison.holds(value, warning):
                return self._change(state, window, Level.WARNING, value, now)
        level = Level.CRITICAL if firing else Level.OK
        return self._change(state, window, level, value, now)

    def _change(
        self, state: _RuleState, window: Window, level: str, value: float | None, now: int
    ) -> AlertEvent | None:
        if level == state.level:
            return None
        previous_level, state.level = state.level, level
        event = self._event(state, window, level, previous_level, value, now)
        state.level_since_ns = window.end_ns
        return event

    def _event(
        self,
        state: _RuleState,
        window: Window,
        level: str,
        previous_level: str,
        value: float | None,
        now: int,
    ) -> AlertEvent:
        rule, key = state.rule, state.key
        tags = dict(rule.tags)
        where = "".join(f", {k}={v}" for k, v in sorted(tags.items()))
        shown = "no value" if value is None or math.isnan(value) else f"{value:.6g}"
        if rule.event_type is EventType.DEADMAN and rule.aggregation == "sum":
            what = f"sum({rule.measurement}.{rule.field}{where}) over {rule.granularity_s:g}s is {shown}"
        elif rule.event_type is EventType.DEADMAN:
            what = f"{shown} points of {rule.measurement}.{rule.field}{where} in {rule.granularity_s:g}s"
        else:
            verb = "changed by" if rule.event_type is EventType.RELATIVE else "is"
            what = (
                f"{rule.aggregation}({rule.measurement}.{rule.field}{where}) over "
                f"{rule.granularity_s:g}s {verb} {shown}"
                + ("%" if rule.event_type is EventType.RELATIVE else "")
            )
        cmp = rule.comparison.value if rule.comparison is not None else "lt"
        message = (
            f"alert {rule.name} of {key.sfc}/{key.sfci} is {level.upper()}: {what} "
            f"({cmp} {_limit(rule, level):g} {'no longer holds' if level == Level.OK else 'holds'})"
            if rule.threshold is not None
            else f"alert {rule.name} of {key.sfc}/{key.sfci} is {level.upper()}: {what}"
        )
        return AlertEvent(
            id=str(uuid.uuid4()),
            alert=rule.name,
            policy=rule.policy,
            tenant=key.tenant,
            sfc=key.sfc,
            sfci=key.sfci,
            level=level,
            previous_level=previous_level,
            time_ns=window.end_ns,
            emitted_ns=now,
            value=value,
            threshold=rule.threshold,
            comparison=rule.comparison.value if rule.comparison is not None else None,
            aggregation=rule.aggregation,
            event_type=rule.event_type.value,
            measurement=rule.measurement,
            field=rule.field,
            window_s=rule.granularity_s,
            duration_ns=max(0, window.end_ns - state.level_since_ns),
            tags=tags,
            notify_sfemc=rule.notify_sfemc,
            webhooks=tuple(rule.webhooks),
            message=message,
        )


def rules_from_dicts(items: Sequence[dict[str, Any]]) -> list[AlertRule]:
    """AlertRules from their `ServiceModel.to_dict()` form (what the orchestrator sends)."""
    from flame.tosca.model import Comparison  # noqa: PLC0415 - keeps the hot module lean

    rules = []
    for item in items:
        rules.append(
            AlertRule(
                name=str(item["name"]),
                policy=str(item.get("policy", "")),
                event_type=EventType(item["event_type"]),
                measurement=str(item["measurement"]),
                field=str(item["field"]),
                threshold=None if item.get("threshold") is None else float(item["threshold"]),
                warning_threshold=None
                if item.get("warning_threshold") is None
                else float(item["warning_threshold"]),
                granularity_s=float(item["granularity_s"]),
                aggregation=str(item.get("aggregation", "mean")),
                comparison=None
                if item.get("comparison") is None
                else Comparison(item["comparison"]),
                tags=tuple((str(k), str(v)) for k, v in item.get("tags", ())),
                notify_sfemc=bool(item.get("notify_sfemc", False)),
                webhooks=tuple(str(w) for w in item.get("webhooks", ())),
                description=str(item.get("description", "")),
            )
        )
    return rules
