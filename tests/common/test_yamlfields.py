"""Declarative field tables (issue 18 item 2): one mapper puts every problem at its YAML node."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlfields import (
    FAILED,
    Field,
    FieldContext,
    Problem,
    Shape,
    read_map,
)
from flame.common.yamlsrc import load_yaml


def _even(value: Any, ctx: FieldContext) -> Any:
    if not isinstance(value, int) or value % 2:
        return Problem("X1", f"{ctx.what}: {ctx.key} must be even", value=value)
    return value


def _load(text: str, sink: DiagnosticSink) -> Any:
    return load_yaml(text, "f.yaml", sink)


def _at(line: int, column: int) -> Position:
    return Position("f.yaml", line, column)


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(-50, 50), max_size=6))
def test_each_problem_is_at_its_value_and_good_values_are_read(values: dict[str, int]) -> None:
    text = "".join(f"{key}: {value}\n" for key, value in values.items()) or "{}\n"
    shape = Shape(tuple(Field(key, _even) for key in "abcdef"))
    sink = DiagnosticSink()
    fields = read_map(_load(text, sink), _at(1, 1), "thing", sink, shape)
    assert fields is not None
    keys = list(values)
    odd = [key for key in "abcdef" if key in values and values[key] % 2]  # in the table's order
    # Line n holds the n-th key written; the value starts after "k: ".
    assert [(d.code, d.position, d.value) for d in sink.items] == [
        ("X1", _at(keys.index(key) + 1, 4), values[key]) for key in odd
    ]
    assert fields.ok is not odd
    for key in "abcdef":
        expected = values[key] if key in values and key not in odd else None
        assert fields[key] == expected


def test_unknown_keys_missing_fields_and_defaults() -> None:
    shape = Shape(
        (
            Field("name", missing=Problem("X2", "{what} has no '{key}'", where="anchor")),
            Field("size", _even, default=2),
            Field("note", absent="none"),
        ),
        allowed={"name", "size", "note", "description"},
    )
    sink = DiagnosticSink()
    text = "entry:\n  sise: 3\n  description: ok\n"
    root = _load(text, sink)
    fields = read_map(root["entry"], root.at("entry"), "entry", sink, shape, anchor=_at(1, 1))
    assert fields is not None
    assert (fields["size"], fields["note"], fields.ok) == (2, "none", False)
    unknown, missing = sink.items
    assert (unknown.code, unknown.position, unknown.hint) == (
        "E200",
        _at(2, 3),
        "did you mean 'size'?",
    )
    assert (missing.code, missing.message, missing.position) == (
        "X2",
        "entry has no 'name'",
        _at(1, 1),
    )


def test_where_a_problem_points() -> None:
    def on_key(value: Any, ctx: FieldContext) -> Any:
        return Problem("X3", "key", where="key")

    def on_other(value: Any, ctx: FieldContext) -> Any:
        return Problem("X4", "other", key="b")

    shape = Shape((Field("a", on_key), Field("c", on_other)), allowed={"a", "b", "c"})
    sink = DiagnosticSink()
    text = "a: 1\nb:   2\nc: 3\n"
    read_map(_load(text, sink), _at(1, 1), "m", sink, shape)
    assert [(d.code, d.position) for d in sink.items] == [("X3", _at(1, 1)), ("X4", _at(2, 6))]


def test_fatal_and_stop_at_first_stop_reading() -> None:
    calls: list[str] = []

    def record(value: Any, ctx: FieldContext) -> Any:
        calls.append(ctx.key)
        return _even(value, ctx)

    sink = DiagnosticSink()
    root = _load("a: 1\nb: 3\nc: 4\n", sink)
    read_map(
        root, _at(1, 1), "m", sink, Shape((Field("a", record, fatal=True), Field("b", record)))
    )
    assert calls == ["a"]
    calls.clear()
    shape = Shape(tuple(Field(k, record) for k in "abc"), stop_at_first=True)
    read_map(root, _at(1, 1), "m", sink, shape)
    assert calls == ["a"]
    calls.clear()
    read_map(root, _at(1, 1), "m", sink, Shape(tuple(Field(k, record) for k in "abc")))
    assert calls == ["a", "b", "c"]


def test_nested_maps_are_located_by_the_same_mapper() -> None:
    inner = Shape((Field("x", _even, default=None),))

    def nested(value: Any, ctx: FieldContext) -> Any:
        fields = read_map(value, ctx.pos, f"{ctx.key} of {ctx.what}", ctx.sink, inner)
        return FAILED if fields is None or not fields.ok else fields["x"]

    sink = DiagnosticSink()
    text = "outer:\n  inner: {x: 5}\n  other: [1]\n"
    root = _load(text, sink)
    shape = Shape((Field("inner", nested), Field("other", nested)))
    fields = read_map(root["outer"], root.at("outer"), "outer", sink, shape)
    assert fields is not None
    assert not fields.ok
    assert [(d.code, d.message, d.position) for d in sink.items] == [
        ("X1", "inner of outer: x must be even", _at(2, 14)),
        ("E201", "other of outer must be a mapping, got a list", _at(3, 10)),
    ]


def test_not_a_mapping_reads_as_none() -> None:
    sink = DiagnosticSink()
    assert read_map([1, 2], _at(1, 1), "thing", sink, Shape(())) is None
    assert [d.code for d in sink.items] == ["E201"]
