"""The FLAME profile's alerts and state changes: alert triggers (of Alert and StateChange
policies) become CLMC alert rules, and StateChange triggers become the SFEMC's endpoint state
changes, linked to their alerts by name or by a `clmc::` reference (SFEMC-1, SFEMC-2, CLMC-19).

The scalar fields of a trigger and its condition are declared as field tables (alert_fields.py,
read by `flame.common.yamlfields`, whose one mapper locates every problem); what depends on other fields or on the chain (warning levels, tags, handlers,
references) is checked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from flame.common.diagnostics import Position
from flame.common.yamlfields import FAILED, read_map
from flame.common.yamlshape import as_map, check_keys, did_you_mean, kind_of, missing_position
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.alert_fields import CONDITION, DEADMAN_CONDITION, PERIOD, TRIGGER
from flame.tosca.endpoint_states import EndpointStates
from flame.tosca.entities import PolicyTemplate
from flame.tosca.model import (
    INITIAL_STATES,
    AlertRule,
    EndpointState,
    EndpointTarget,
    EventType,
    StateChangePolicy,
)
from flame.tosca.profile_context import (
    ALERT_POLICY,
    ALERT_REF,
    SFEMC_HANDLER,
    STATE_CHANGE,
    ProfileContext,
    is_number,
)

# An alert's condition; a StateChange trigger carrying its own alert may also give a period.
CONDITION_KEYS = {
    "threshold",
    "warning_threshold",
    "granularity",
    "aggregation_method",
    "resource_type",
    "comparison_operator",
}
# A StateChange trigger that refers to an alert of an alert specification.
REFERENCE_TRIGGER_KEYS = {"description", "condition", "action"}
REFERENCE_CONDITION_KEYS = {"constraint", "period"}
TAG_KEYS = ("sfc", "sfci", "sf", "sfe", "server", "location", "cluster", "fqdn", "sr", "host", "ue")


@dataclass(slots=True)
class Alert:
    rule: AlertRule
    pos: Position
    doc: str
    referenced: bool = False


def _trigger_map(policy: PolicyTemplate) -> YMap:
    return YMap(policy.pos) if policy.triggers is None else policy.triggers


class Alerts:
    def __init__(self, ctx: ProfileContext, states: EndpointStates) -> None:
        self.ctx = ctx
        self.sink = ctx.sink
        self.states = states

    def read(self) -> dict[str, Alert]:
        alerts: dict[str, Alert] = {}
        sources = [(p, False) for p in self.ctx.policies(ALERT_POLICY)]
        sources += [(p, True) for p in self.ctx.policies(STATE_CHANGE)]
        sources.sort(key=lambda source: source[0].pos)  # a duplicate is the later one
        for policy, inline in sources:
            triggers = _trigger_map(policy)
            for name, body in triggers.items():
                trigger = as_map(
                    body,
                    triggers.at(name),
                    f"trigger '{name}' of policy '{policy.name}'",
                    self.sink,
                )
                if trigger is None:
                    continue
                condition = trigger.get("condition")
                if inline and isinstance(condition, dict) and "constraint" in condition:
                    continue  # a reference to an alert of an alert specification
                rule = self._rule(policy, name, trigger, triggers.key_at(name), inline)
                if rule is None:
                    self.ctx.broken_alerts.add(name)
                    continue
                if name in alerts:
                    self.sink.error(
                        codes.DUPLICATE_TRIGGER,
                        f"trigger name '{name}' is already used at {alerts[name].pos}",
                        triggers.key_at(name),
                        value=name,
                        hint="trigger names identify alerts in the CLMC; make them unique",
                    )
                    continue
                alerts[name] = Alert(
                    rule, triggers.key_at(name), policy.pos.file, referenced=inline
                )
        return alerts

    def _rule(
        self, policy: PolicyTemplate, name: str, trigger: YMap, pos: Position, inline: bool
    ) -> AlertRule | None:
        what = f"trigger '{name}' of policy '{policy.name}'"
        head = read_map(trigger, trigger.pos, what, self.sink, TRIGGER, anchor=pos)
        condition = as_map(
            trigger.get("condition"), trigger.at("condition"), f"condition of {what}", self.sink
        )
        if head is None or condition is None or "condition" not in trigger:
            if condition is not None:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"{what} has no condition",
                    pos,
                    hint="add 'condition: {...}'",
                )
            return None
        allowed_condition = CONDITION_KEYS | {"period"} if inline else CONDITION_KEYS
        check_keys(condition, allowed_condition, f"condition of {what}", self.sink)
        event = head["event_type"]
        fields = read_map(
            condition,
            condition.pos,
            what,
            self.sink,
            DEADMAN_CONDITION if event is EventType.DEADMAN else CONDITION,
            anchor=missing_position(trigger, "condition"),
        )
        warning = self._warning(condition, event, what)
        tags = self._tags(condition, what)
        notify, hooks = self._handlers(trigger, what, inline)
        if not head.ok or fields is None or not fields.ok or warning is FAILED:
            return None
        measurement, field_name = head["metric"]
        description = trigger.get("description")
        return AlertRule(
            name=name,
            policy=policy.name,
            event_type=event,
            measurement=measurement,
            field=field_name,
            threshold=float(fields["threshold"]),
            warning_threshold=None if warning is None else float(warning),
            granularity_s=fields["granularity"],
            aggregation=str(fields["aggregation_method"]),
            comparison=fields["comparison_operator"],
            tags=tags,
            notify_sfemc=notify,
            webhooks=hooks,
            description=description.strip() if isinstance(description, str) else "",
        )

    def _warning(self, condition: YMap, event: EventType | None, what: str) -> Any:
        """The warning level: a number beside a threshold or relative alert (FAILED if not)."""
        warning = condition.get("warning_threshold")
        if warning is not None and (not is_number(warning) or event is EventType.DEADMAN):
            self.sink.error(
                codes.BAD_TRIGGER,
                f"{what}: condition.warning_threshold must be a number, for a threshold or "
                f"relative alert; got {kind_of(warning)} for {event.value if event else '?'}",
                condition.at("warning_threshold"),
                hint="for example 'warning_threshold: 80' beside 'threshold: 100'; a deadman "
                "alert has one level",
            )
            return FAILED
        return warning

    def _tags(self, condition: YMap, what: str) -> tuple[tuple[str, str], ...]:
        raw = condition.get("resource_type")
        if raw is None:
            return ()
        tags = as_map(raw, condition.at("resource_type"), f"resource_type of {what}", self.sink)
        result: list[tuple[str, str]] = []
        for key, value in (tags or {}).items():
            tag = key[len("flame_") :] if key.startswith("flame_") else key
            pos = tags.key_at(key) if tags is not None else condition.pos
            if tag not in TAG_KEYS:
                self.sink.error(
                    codes.UNKNOWN_TAG,
                    f"{what}: resource_type filters on unknown tag '{key}'",
                    pos,
                    value=key,
                    hint=did_you_mean(tag, TAG_KEYS) or f"tags: {', '.join(TAG_KEYS)}",
                )
                continue
            if (
                tag == "sf"
                and isinstance(value, str)
                and self.ctx.sfs
                and value not in self.ctx.sfs
            ):
                self.sink.error(
                    codes.NOT_A_TARGET,
                    f"{what}: resource_type sf '{value}' is not a service function of this chain",
                    tags.at(key) if tags is not None else pos,
                    value=value,
                    hint=did_you_mean(value, self.ctx.sfs),
                )
                continue
            value_pos = tags.at(key) if tags is not None else pos
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                self.sink.error(
                    codes.UNKNOWN_TAG,
                    f"{what}: resource_type '{key}' must be a single value to match, got {kind_of(value)}",
                    value_pos,
                    hint="give one tag value; write one trigger per value to watch several",
                )
                continue
            if tag == "cluster" and isinstance(value, str):
                self.ctx.cluster_known(value, value_pos)
            if tag == "fqdn" and self.ctx.fqdns and value not in self.ctx.fqdns:
                self.sink.error(
                    codes.NOT_A_TARGET,
                    f"{what}: resource_type fqdn '{value}' is not served by this chain",
                    value_pos,
                    value=str(value),
                    hint=did_you_mean(str(value), self.ctx.fqdns)
                    or f"FQDNs of this chain: {', '.join(sorted(self.ctx.fqdns))}",
                )
                continue
            if tag == "sr" and self.ctx.infra is not None:
                routers = self.ctx.infra.service_routers
                if value not in routers:
                    self.sink.error(
                        codes.UNKNOWN_CLUSTER,
                        f"{what}: resource_type sr '{value}' is not a service router of topology "
                        f"'{self.ctx.infra.name}'",
                        value_pos,
                        value=str(value),
                        hint=did_you_mean(str(value), routers)
                        or f"service routers: {', '.join(sorted(routers))}",
                    )
                    continue
            result.append((tag, str(value)))
        return tuple(result)

    def _handlers(self, trigger: YMap, what: str, inline: bool) -> tuple[bool, tuple[str, ...]]:
        """Who an alert notifies: the SFEMC and/or webhooks.

        A StateChange trigger with states and no implementation notifies the SFEMC implicitly;
        one that lists handlers without flame_sfemc could never change a state, so it is an error.
        """
        action = trigger.get("action")
        if not isinstance(action, YMap):
            return (False, ())
        allowed = {"implementation", "states"} if inline else {"implementation"}
        check_keys(action, allowed, f"action of {what}", self.sink)
        changes_states = inline and "states" in action
        raw = action.get("implementation")
        if raw is None:
            return (changes_states, ())
        items = raw if isinstance(raw, list) else [raw]
        notify = False
        hooks: list[str] = []
        for index, item in enumerate(items):
            pos = raw.at(index) if isinstance(raw, YSeq) else action.at("implementation")
            if item == SFEMC_HANDLER:
                notify = True
                continue
            url = urlparse(item) if isinstance(item, str) else None
            if url is None or url.scheme not in ("http", "https") or not url.netloc:
                self.sink.error(
                    codes.BAD_WEBHOOK,
                    f"{what}: handler {item!r} is neither {SFEMC_HANDLER} nor an http(s) URL",
                    pos,
                    value=item if isinstance(item, str) else None,
                    hint=did_you_mean(item, [SFEMC_HANDLER])
                    or "for example https://hooks.example.com/alerts",
                )
                continue
            hooks.append(item)
        if changes_states and not notify:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what} changes endpoint states but its implementation does not include "
                f"{SFEMC_HANDLER}, so the SFEMC would never hear of it",
                action.at("implementation"),
                hint=f"add '{SFEMC_HANDLER}' to action.implementation",
            )
        return (notify, tuple(hooks))

    def state_changes(self, alerts: dict[str, Alert]) -> list[StateChangePolicy]:
        result: list[StateChangePolicy] = []
        allowed = (EndpointState.UNPLACED, *INITIAL_STATES)
        for policy in self.ctx.policies(STATE_CHANGE):
            triggers = _trigger_map(policy)
            if not triggers:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"state-change policy '{policy.name}' has no triggers",
                    policy.pos,
                    hint="add 'triggers: {name: {event_type: ..., metric: ..., condition: ..., action: ...}}'",
                )
            for name, body in triggers.items():
                if not isinstance(body, YMap):
                    continue
                what = f"trigger '{name}' of policy '{policy.name}'"
                condition = body.get("condition")
                period = None
                reference = isinstance(condition, YMap) and "constraint" in condition
                if isinstance(condition, YMap) and reference:
                    check_keys(body, REFERENCE_TRIGGER_KEYS, what, self.sink)
                    check_keys(
                        condition, REFERENCE_CONDITION_KEYS, f"condition of {what}", self.sink
                    )
                    alert_name = self._alert_reference(condition, alerts, what)
                else:
                    alert_name = name if name in alerts else None
                if isinstance(condition, YMap) and "period" in condition:
                    read = read_map(condition, condition.pos, what, self.sink, PERIOD)
                    period = read["period"] if read is not None else None
                action = body.get("action")
                if not isinstance(action, YMap) or "states" not in action:
                    self.sink.error(
                        codes.BAD_TRIGGER,
                        f"{what}: the action names no endpoint states to change",
                        body.at("action") if "action" in body else body.pos,
                        hint="add 'action: {states: {<cluster>: {<sf>: connected}}}'",
                    )
                    continue
                if reference:
                    check_keys(action, {"states"}, f"action of {what}", self.sink)
                changes = self.states.state_map(
                    action["states"], action.at("states"), policy, allowed, what
                )
                valid: list[EndpointTarget] = []
                for entry in changes:
                    change, pos = entry.target, entry.state_pos
                    initial = self.ctx.initial.get((change.cluster, change.sf))
                    if initial is None and (change.cluster, change.sf) not in self.ctx.mentioned:
                        self.sink.error(
                            codes.ILLEGAL_TRANSITION,
                            f"{what}: '{change.sf}' has no endpoint on cluster '{change.cluster}' to move to "
                            f"'{change.state}'",
                            pos,
                            value=change.sf,
                            hint=f"add '{change.cluster}: {{{change.sf}: placed}}' to an initial policy so the "
                            "surrogate exists",
                        )
                    if initial is None:
                        continue
                    valid.append(change)
                if alert_name is not None and valid:
                    result.append(
                        StateChangePolicy(policy.name, name, alert_name, tuple(valid), period)
                    )
        return result

    def _alert_reference(self, condition: YMap, alerts: dict[str, Alert], what: str) -> str | None:
        ref = condition.get("constraint")
        pos = condition.at("constraint")
        if not isinstance(ref, str) or not ref.startswith(ALERT_REF):
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: constraint must be '{ALERT_REF}<alert trigger>', got {kind_of(ref)}",
                pos,
                value=ref if isinstance(ref, str) else None,
                hint=f"for example 'constraint: {ALERT_REF}high_latency'",
            )
            return None
        name = ref[len(ALERT_REF) :]
        if name in self.ctx.broken_alerts:
            return None  # the alert's own errors are reported; do not call the reference broken
        alert = alerts.get(name)
        if alert is None:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: no alert trigger named '{name}' in the alert specification",
                pos,
                value=ref,
                hint=did_you_mean(name, alerts)
                or "validate the resource and alert specifications together: "
                "flame validate resources.yaml alerts.yaml",
            )
            return None
        alert.referenced = True
        if not alert.rule.notify_sfemc:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: alert '{name}' does not notify {SFEMC_HANDLER}, so this state change would never happen",
                pos,
                value=ref,
                hint=f"add '{SFEMC_HANDLER}' to the alert's action.implementation (at {alert.pos})",
            )
        return name
