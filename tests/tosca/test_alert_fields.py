"""The alert triggers' field tables (issue 18), read by `flame.common.yamlfields`.

The invalid-template corpus proves each field end to end (E808, E809, E820 ...); these tests pin
what the tables promise the alert checker: parsed values, reading order, the anchor for missing
fields, and that any written value yields a value or exactly one located diagnostic.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlfields import Shape, read_map
from flame.common.yamlsrc import YMap, load_yaml
from flame.tosca import codes
from flame.tosca.alert_fields import CONDITION, DEADMAN_CONDITION, PERIOD, TRIGGER
from flame.tosca.model import Comparison, EventType

ANCHOR = Position("t.yaml", 9, 3)


def _map(text: str) -> YMap:
    sink = DiagnosticSink()
    value = load_yaml(text, "t.yaml", sink)
    assert isinstance(value, YMap)
    assert not sink.items
    return value


def test_trigger_fields_parse_to_the_model_s_types() -> None:
    sink = DiagnosticSink()
    trigger = _map("event_type: deadman\nmetric: sr_requests.response_time\ncondition: {}\n")
    read = read_map(trigger, trigger.pos, "t", sink, TRIGGER, anchor=ANCHOR)
    assert read is not None
    assert read.ok
    assert read.values == {
        "event_type": EventType.DEADMAN,
        "metric": ("sr_requests", "response_time"),
    }
    assert not sink.items


def test_a_missing_or_null_event_type_is_reported_at_the_trigger_s_name() -> None:
    """SFEMC-1: 'event_type: null' reads like a missing event_type."""
    for text in ("metric: a.b\n", "metric: a.b\nevent_type: null\n"):
        sink = DiagnosticSink()
        read = read_map(_map(text), Position("t.yaml", 1, 1), "t", sink, TRIGGER, anchor=ANCHOR)
        assert read is not None
        assert not read.ok
        [d] = sink.items
        assert (d.code, d.position, d.message) == (codes.BAD_TRIGGER, ANCHOR, "t has no event_type")


def test_condition_fields_are_read_in_order_with_missing_ones_at_the_anchor() -> None:
    sink = DiagnosticSink()
    read = read_map(_map("granularity: -1\n"), ANCHOR, "t", sink, CONDITION, anchor=ANCHOR)
    assert read is not None
    assert not read.ok
    assert [(d.code, d.position) for d in sink.items] == [
        (codes.BAD_TRIGGER, ANCHOR),  # threshold
        (codes.BAD_TRIGGER, Position("t.yaml", 1, 14)),  # granularity, at its value
        (codes.BAD_TRIGGER, ANCHOR),  # comparison_operator
    ]
    assert sink.items[0].message == "t: condition.threshold must be a number, got nothing (null)"
    assert sink.items[2].message == "t: condition needs a comparison_operator"


def test_a_deadman_condition_needs_no_comparison_operator() -> None:
    """SFEMC-1: deadman alerts fire on silence; they compare nothing."""
    sink = DiagnosticSink()
    text = "threshold: 0\ngranularity: 30 s\n"
    read = read_map(_map(text), ANCHOR, "t", sink, DEADMAN_CONDITION, anchor=ANCHOR)
    assert read is not None
    assert read.values == {
        "threshold": 0,
        "granularity": 30.0,
        "aggregation_method": "mean",
        "comparison_operator": None,
    }
    assert not sink.items
    read = read_map(_map(text + "comparison_operator: lte\n"), ANCHOR, "t", sink, CONDITION)
    assert read is not None
    assert read["comparison_operator"] is Comparison.LTE
    assert not sink.items


def test_the_tables_leave_the_condition_s_keys_to_the_caller() -> None:
    """The checker reports unknown condition keys as 'condition of <trigger>' itself."""
    sink = DiagnosticSink()
    text = "threshold: 1\ngranularity: 5\ncomparison_operator: gt\nperiod: 2 m\nbogus: 1\n"
    assert read_map(_map(text), ANCHOR, "t", sink, CONDITION) is not None
    read = read_map(_map(text), ANCHOR, "t", sink, PERIOD)
    assert read is not None
    assert read["period"] == 120.0
    assert not sink.items


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_FIELDS = [(shape, field.key) for shape in (TRIGGER, CONDITION, PERIOD) for field in shape.fields]


@given(value=_VALUES, field=st.sampled_from(_FIELDS))
def test_any_written_value_is_read_or_reported_once_where_it_is(
    value: Any, field: tuple[Shape, str]
) -> None:
    """Whatever is written under a key, reading never raises and reports at most once."""
    shape, key = field
    only = Shape(tuple(f for f in shape.fields if f.key == key), allowed=shape.allowed)
    m = YMap(Position("t.yaml", 2, 1))
    m[key] = value
    m.key_pos[key] = Position("t.yaml", 3, 1)
    m.value_pos[key] = Position("t.yaml", 3, 9)
    sink = DiagnosticSink()
    read = read_map(m, m.pos, "t", sink, only, anchor=ANCHOR)
    assert read is not None
    if read.ok:
        assert not sink.items
    else:
        [d] = sink.items
        assert d.code in (codes.BAD_TRIGGER, codes.BAD_METRIC, codes.BAD_AGGREGATION)
        assert d.position in (Position("t.yaml", 3, 9), ANCHOR)
