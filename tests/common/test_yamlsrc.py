"""The positioned YAML loader: plain values, with every key, value and item located."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlsrc import YMap, YSeq, load_yaml, node_position, position_of

DOC = """\
# a comment
name: demo
nested:
  key: value
  list:
    - one
    -   two
    - {inline: 1, other: [a, b]}
empty:
"""


def load(text: str, name: str = "f.yaml") -> tuple[object, DiagnosticSink]:
    sink = DiagnosticSink()
    return load_yaml(text, name, sink), sink


def test_values_are_plain_and_equal_to_safe_load() -> None:
    data, sink = load(DOC)
    assert list(sink) == []
    assert data == yaml.safe_load(DOC)
    assert isinstance(data, YMap)
    assert isinstance(data, dict)
    assert isinstance(data["nested"]["list"], YSeq)
    assert isinstance(data["nested"]["list"], list)
    assert data["empty"] is None


def test_key_and_value_positions() -> None:
    data, _ = load(DOC, "doc.yaml")
    assert isinstance(data, YMap)
    assert data.pos == Position("doc.yaml", 2, 1)
    assert data.key_pos["name"] == Position("doc.yaml", 2, 1)
    assert data.value_pos["name"] == Position("doc.yaml", 2, 7)
    assert data.at("name") == Position("doc.yaml", 2, 7)
    assert data.key_at("nested") == Position("doc.yaml", 3, 1)
    nested = data["nested"]
    assert nested.pos == Position("doc.yaml", 4, 3)
    assert nested.key_at("list") == Position("doc.yaml", 5, 3)
    assert nested.at("key") == Position("doc.yaml", 4, 8)
    # An empty value is located where it would be.
    assert data.at("empty").line == 9


def test_sequence_item_positions() -> None:
    data, _ = load(DOC)
    items = data["nested"]["list"]  # type: ignore[index]
    assert items.pos == Position("f.yaml", 6, 5)
    assert items.item_pos == [
        Position("f.yaml", 6, 7),
        Position("f.yaml", 7, 9),
        Position("f.yaml", 8, 7),
    ]
    assert items.at(1) == Position("f.yaml", 7, 9)
    inline = items[2]
    assert inline.key_at("other") == Position("f.yaml", 8, 19)
    assert inline["other"].at(1) == Position("f.yaml", 8, 30)


def test_fallback_positions() -> None:
    data, _ = load(DOC)
    assert isinstance(data, YMap)
    # Absent keys and out-of-range items fall back to the container itself.
    assert data.at("missing") == data.pos
    assert data.key_at("missing") == data.pos
    items = data["nested"]["list"]
    assert items.at(99) == items.pos
    assert items.at(-1) == items.pos
    default = Position("elsewhere", 1, 1)
    assert position_of(data, "name", default) == data.at("name")
    assert position_of(items, 0, default) == items.at(0)
    assert position_of({"name": 1}, "name", default) == default
    assert position_of(data, 0, default) == default
    assert node_position(items, default) == items.pos
    assert node_position("scalar", default) == default


def test_duplicate_key_is_reported_and_first_kept() -> None:
    data, sink = load("a: 1\nb: 2\na: 3\n")
    assert data == {"a": 1, "b": 2}
    [d] = list(sink)
    assert (d.code, d.position) == ("E101", Position("f.yaml", 3, 1))
    assert "line 1" in d.message
    assert d.value == "a"


def test_duplicate_keys_in_nested_and_flow_mappings() -> None:
    _, sink = load("x:\n  y: {k: 1, k: 2}\n")
    [d] = list(sink)
    assert (d.code, d.position.line, d.position.column) == ("E101", 2, 13)


def test_mapping_as_key_is_reported() -> None:
    data, sink = load("? [a, b]\n: v\nok: 1\n")
    assert data == {"ok": 1}
    [d] = list(sink)
    assert (d.code, d.position) == ("E108", Position("f.yaml", 1, 3))


def test_non_string_keys_become_strings() -> None:
    data, sink = load("1: one\n2.5: x\ntrue: t\nnull: n\n~: tilde\n")
    assert "1" in data  # type: ignore[operator]
    assert data["2.5"] == "x"  # type: ignore[index]
    assert data["true"] == "t"  # type: ignore[index]
    assert data["null"] == "n"  # type: ignore[index]
    # `null` and `~` are the same key.
    assert [d.code for d in sink] == ["E101"]


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: [1, 2\n", 2, 1),
        ("a: b: c\n", 1, 5),
        ("a:\n  - x\n  y: 1\n", 3, 3),
        ('a: "unterminated\n', 2, 1),
        ("a: 'x'y\n", 1, 7),
        ("\tkey: 1\n", 1, 1),
        ("a: *nowhere\n", 1, 4),
    ],
)
def test_syntax_errors_are_located(text: str, line: int, column: int) -> None:
    data, sink = load(text)
    assert data is None
    [d] = list(sink)
    assert d.code == "E100"
    assert (d.position.line, d.position.column) == (line, column)
    assert d.message.startswith("YAML")
    assert d.hint


def test_unreadable_scalars_are_reported_and_kept_as_text() -> None:
    data, sink = load("when: 2024-13-45\nok: 2024-01-31\nn: !!int x\n")
    assert data == {"when": "2024-13-45", "ok": dt.date(2024, 1, 31), "n": "x"}
    assert [(d.code, d.position.line, d.position.column) for d in sink] == [
        ("E100", 1, 7),
        ("E100", 3, 4),
    ]
    assert "quote" in (next(iter(sink)).hint or "")


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_documents_are_none_without_errors(text: str) -> None:
    data, sink = load(text)
    assert data is None
    assert list(sink) == []


def test_multiple_documents_are_an_error() -> None:
    data, sink = load("a: 1\n---\nb: 2\n")
    assert data is None
    [d] = list(sink)
    assert d.code == "E100"
    assert d.position.line == 2


def test_scalar_and_list_documents() -> None:
    assert load("42\n")[0] == 42
    data, _ = load("- a\n- b\n")
    assert isinstance(data, YSeq)
    assert data.item_pos == [Position("f.yaml", 1, 3), Position("f.yaml", 2, 3)]


def test_anchors_and_aliases_share_one_value() -> None:
    data, sink = load("a: &x {k: [1, 2]}\nb: *x\nc: *x\n")
    assert list(sink) == []
    assert data == {"a": {"k": [1, 2]}, "b": {"k": [1, 2]}, "c": {"k": [1, 2]}}
    assert isinstance(data, YMap)
    assert data["b"] is data["a"]
    # An alias is the anchored node itself, so its value is located at the anchor.
    assert data.at("b") == Position("f.yaml", 1, 4)
    assert data.key_at("b") == Position("f.yaml", 2, 1)
    assert data["b"].key_at("k") == Position("f.yaml", 1, 8)


def test_merge_keys() -> None:
    text = "base: &b\n  x: 1\n  y: 2\nderived:\n  z: 3\n  <<: *b\n"
    data, sink = load(text)
    assert list(sink) == []
    assert data == yaml.safe_load(text)
    derived = data["derived"]  # type: ignore[index]
    assert derived == {"z": 3, "x": 1, "y": 2}
    # Merged keys are located where they are written: in the anchored mapping.
    assert derived.key_at("x") == Position("f.yaml", 2, 3)
    assert derived.at("y") == Position("f.yaml", 3, 6)


def test_merge_list_earlier_mappings_win() -> None:
    text = "a: &a {k: 1}\nb: &b {k: 2, m: 3}\nc:\n  <<: [*a, *b]\n"
    data, sink = load(text)
    assert list(sink) == []
    assert data == yaml.safe_load(text)
    assert data["c"] == {"k": 1, "m": 3}  # type: ignore[index]


def test_explicit_key_after_merge_overrides_it() -> None:
    # Regression: '<<' was applied in document order, so the usual override idiom (merge first,
    # then explicit keys) reported the override as a duplicate (E101) and dropped it.
    text = "base: &b\n  x: 1\n  y: 2\nderived:\n  <<: *b\n  y: 3\n"
    data, sink = load(text)
    assert list(sink) == []
    assert data == yaml.safe_load(text)
    assert data["derived"]["y"] == 3  # type: ignore[index]
    assert data["derived"].at("y") == Position("f.yaml", 6, 6)  # type: ignore[index]


def test_merge_of_a_scalar_is_reported() -> None:
    # Regression: a merge of a non-mapping vanished without a diagnostic (PyYAML rejects it).
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("a:\n  <<: 1\n  b: 2\n")
    data, sink = load("a:\n  <<: 1\n  b: 2\n")
    assert data == {"a": {"b": 2}}
    assert [(d.code, d.position.line) for d in sink] == [("E100", 2)]


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {k: *a}\n", "x:\n  y: &y\n    - z: *y\n"])
def test_recursive_alias_is_reported(text: str) -> None:
    # A value that contains itself would send every consumer into endless recursion.
    assert yaml.safe_load(text)  # PyYAML builds a recursive structure
    _, sink = load(text)
    [d] = list(sink)
    assert d.code == "E100"
    assert d.position.line == next(i for i, s in enumerate(text.splitlines(), 1) if "&" in s)


def test_quoted_merge_key_is_an_ordinary_key() -> None:
    data, sink = load("'<<': 1\n")
    assert list(sink) == []
    assert data == {"<<": 1}


def test_unicode_and_positions_count_characters() -> None:
    text = "naïve: café\nclé: [é, ü]\n"
    data, sink = load(text)
    assert list(sink) == []
    assert data == {"naïve": "café", "clé": ["é", "ü"]}
    assert isinstance(data, YMap)
    assert data.at("naïve") == Position("f.yaml", 1, 8)
    assert data["clé"].at(1) == Position("f.yaml", 2, 10)
