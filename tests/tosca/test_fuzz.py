"""Fuzzing the validator: whatever a user uploads, it answers with located diagnostics.

The properties are the contract of `validate_texts`: it never raises for a user's text, every
diagnostic carries a stable code, a position and a message, and a template that was changed
into an invalid one is reported at a place inside that template.

Runs are deterministic (derandomize) so CI never flakes. Set HYPOTHESIS_PROFILE to the name of a
registered Hypothesis profile (or to any other value for random runs with Hypothesis' defaults)
to explore further, e.g. ``HYPOTHESIS_PROFILE=fuzz-deep pytest tests/tosca/test_fuzz.py``.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from flame.common.diagnostics import DiagnosticSink
from flame.common.yamlsrc import YMap, YSeq, load_yaml
from flame.topology.loader import load_topology
from flame.topology.model import Topology
from flame.tosca.validator import ValidationResult, validate_texts

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "vod-edge-cache" / "service.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
EXAMPLE_DATA = yaml.safe_load(EXAMPLE_TEXT)
SANDPIT = REPO / "examples" / "topology" / "sandpit.yaml"
NAME = "upload.yaml"
CODE = re.compile(r"^[EW]\d{3}$")

settings.register_profile("fuzz-deep", max_examples=2000, derandomize=False, deadline=None)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE")


@functools.cache
def sandpit() -> Topology:
    return load_topology(SANDPIT)


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic and small by default; HYPOTHESIS_PROFILE switches to a chosen profile."""
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    if _PROFILE not in (None, "dev", "ci"):  # the suite's own profiles keep these counts
        try:
            parent = settings.get_profile(_PROFILE)
        except InvalidArgument:
            parent = settings(derandomize=False)
        return settings(parent, **common)
    return settings(max_examples=max_examples, derandomize=True, database=None, **common)


def run_validator(texts: dict[str, str], **kwargs: Any) -> ValidationResult:
    # Anything but a returned result (an exception of any kind) fails the property.
    return validate_texts(texts, **kwargs)


def check_diagnostics(result: ValidationResult) -> None:
    assert isinstance(result, ValidationResult)
    for d in result.diagnostics:
        assert CODE.match(d.code), d
        assert isinstance(d.position.line, int), d
        assert isinstance(d.position.column, int), d
        assert d.position.line >= 0, d
        assert d.position.column >= 0, d
        assert isinstance(d.message, str), d
        assert d.message.strip(), d
        str(d)  # renders
        d.as_dict()
    # Errors and warnings partition the diagnostics; a model only comes without errors.
    assert len(result.errors) + len(result.warnings) == len(result.diagnostics)
    if result.model is not None:
        assert result.ok


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def is_inside(text: str, line: int, column: int) -> bool:
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return False
    return 1 <= column <= len(lines[line - 1]) + 1


# Regressions found while fuzzing: a list or mapping where ProfileChecker expected a scalar was
# used as a set member or dict key (TypeError, unhashable); get_property cycles and recursive
# aliases recursed without end (RecursionError). Each must be a located diagnostic instead.


@pytest.mark.parametrize("argument", ["[]", "{a: 1}"])
def test_get_input_with_non_scalar_argument_is_reported(argument: str) -> None:
    text = EXAMPLE_TEXT.replace("fqdn: { get_input: domain }", f"fqdn: {{ get_input: {argument} }}")
    assert text != EXAMPLE_TEXT
    result = validate_texts({NAME: text})
    assert not result.ok
    line = line_of(text, f"fqdn: {{ get_input: {argument} }}")
    assert ("E600", line) in {(d.code, d.position.line) for d in result.errors}


@pytest.mark.parametrize("tag", ["fqdn", "sr"])
def test_resource_type_tag_with_list_value_is_reported(tag: str) -> None:
    text = EXAMPLE_TEXT.replace(
        "resource_type: {fqdn: vod.flame.example, sr: sr-ue-1}\n              comparison_operator: gt",
        f"resource_type: {{{tag}: []}}\n              comparison_operator: gt",
    )
    assert text != EXAMPLE_TEXT
    result = validate_texts({NAME: text}, topology=sandpit())
    assert not result.ok
    line = line_of(text, f"resource_type: {{{tag}: []}}")
    assert line in {d.position.line for d in result.errors}, result.errors


@pytest.mark.parametrize("cycle", ["self", "mutual"])
def test_get_property_cycle_is_reported(cycle: str) -> None:
    text = EXAMPLE_TEXT.replace(
        "        fqdn: { get_input: domain }",
        "        fqdn: { get_property: [SELF, fqdn] }"
        if cycle == "self"
        else "        fqdn: { get_property: [origin, fqdn] }",
    )
    if cycle == "mutual":
        text = text.replace(
            "        fqdn: { concat: [origin., { get_input: domain }] }",
            "        fqdn: { get_property: [cache, fqdn] }",
        )
    assert text.count("get_property") == (1 if cycle == "self" else 2)
    result = validate_texts({NAME: text})
    assert not result.ok
    assert line_of(text, "get_property") in {d.position.line for d in result.errors}


def test_recursive_alias_in_a_function_is_reported() -> None:
    text = EXAMPLE_TEXT.replace(
        "        fqdn: { get_input: domain }", "        fqdn: &f { concat: [*f] }"
    )
    assert text != EXAMPLE_TEXT
    result = validate_texts({NAME: text})
    assert not result.ok
    assert line_of(text, "&f") in {d.position.line for d in result.errors}


def test_example_is_valid() -> None:
    # The mutation properties below are only meaningful if the starting point is valid.
    result = validate_texts({NAME: EXAMPLE_TEXT})
    assert result.ok, result.diagnostics
    assert result.model is not None
    assert result.diagnostics == []


# -- (a) random text ---------------------------------------------------------------------------

YAML_CHARS = string.ascii_letters + string.digits + " \n\t:-[]{},#&*!|>'\"%@`?.\\"
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "tosca_simple_yaml_1_3",
            "eu.ict-flame.nodes.ServiceFunction",
            "eu.ict-flame.policies.InitialPolicy",
            "eu.ict-flame.policies.StateChange",
            "tosca.nodes.Compute",
            "get_input",
            "concat",
            "1 GB",
            "10 s",
            "connected",
            "2024-13-45",
        ]
    ),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "tosca_definitions_version",
            "topology_template",
            "node_templates",
            "policies",
            "imports",
            "type",
            "properties",
            "requirements",
            "capabilities",
            "inputs",
            "metadata",
            "get_input",
            "concat",
            "node_types",
            "derived_from",
            "<<",
        ]
    ),
)
nested = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=25,
)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@fuzz_settings(150)
@given(st.one_of(st.text(max_size=300), st.text(alphabet=YAML_CHARS, max_size=300)))
def test_random_text_never_raises(text: str) -> None:
    result = run_validator({NAME: text})
    check_diagnostics(result)
    assert all(d.position.file == NAME for d in result.diagnostics)
    if not text.strip() or text.lstrip().startswith("#"):
        assert not result.ok  # nothing to validate is an error, never a silent success


@fuzz_settings(150)
@given(nested)
def test_random_yaml_documents_never_raise(data: Any) -> None:
    result = run_validator({NAME: dump(data)})
    check_diagnostics(result)


@fuzz_settings(200)
@given(
    st.dictionaries(keys, nested, max_size=4),
    st.sampled_from(["topology_template", "node_types", "imports", "metadata", "policies"]),
)
def test_random_sections_under_a_tosca_header_never_raise(body: dict[str, Any], where: str) -> None:
    # Wrapped in a valid header so the randomness reaches the template checks, not only E106.
    data = {"tosca_definitions_version": "tosca_simple_yaml_1_3", where: body}
    result = run_validator({NAME: dump(data)})
    check_diagnostics(result)


TOKENS = [
    *sorted(set(re.findall(r"[\w.-]+|[^\w\s]", EXAMPLE_TEXT))),
    "",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "&a",
    "*a",
    "!!str",
    "<<: *a",
    '"',
    "'",
    "|",
    "\t",
]
line_ops = st.one_of(
    st.tuples(st.just("delete"), st.integers(min_value=0)),
    st.tuples(st.just("duplicate"), st.integers(min_value=0)),
    st.tuples(st.just("indent"), st.integers(min_value=0), st.integers(min_value=-6, max_value=6)),
    st.tuples(
        st.just("token"),
        st.integers(min_value=0),
        st.integers(min_value=0),
        st.sampled_from(TOKENS),
    ),
    st.tuples(
        st.just("char"),
        st.integers(min_value=0),
        st.integers(min_value=0),
        st.characters(codec="utf-8"),
    ),
)


def mutate_lines(text: str, ops: list[tuple[Any, ...]]) -> str:
    lines = text.split("\n")
    for op in ops:
        if not lines:
            break
        i = op[1] % len(lines)
        kind = op[0]
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "indent":
            shift = op[2]
            lines[i] = " " * shift + lines[i] if shift > 0 else lines[i][-shift:]
        elif kind == "token":
            found = list(re.finditer(r"[\w.-]+|[^\w\s]", lines[i]))
            if found:
                m = found[op[2] % len(found)]
                lines[i] = lines[i][: m.start()] + op[3] + lines[i][m.end() :]
        else:  # replace one character anywhere in the line (or append one)
            line = lines[i]
            j = op[2] % (len(line) + 1)
            lines[i] = line[:j] + op[3] + line[j + 1 :]
    return "\n".join(lines)


@fuzz_settings(300)
@given(st.lists(line_ops, min_size=1, max_size=5))
def test_line_mutations_of_the_example_never_raise(ops: list[tuple[Any, ...]]) -> None:
    text = mutate_lines(EXAMPLE_TEXT, ops)
    result = run_validator({NAME: text})
    check_diagnostics(result)
    for d in result.diagnostics:
        assert d.position.file == NAME, d
        # Syntax errors may point just past the end of the text, nothing may point further.
        assert d.position.line <= text.count("\n") + 2, d


def test_line_mutation_helper_changes_text() -> None:
    # Guards the fuzzer itself: a no-op mutator would make the properties above vacuous.
    assert mutate_lines(EXAMPLE_TEXT, [("delete", 0)]) != EXAMPLE_TEXT
    assert mutate_lines(EXAMPLE_TEXT, [("indent", 5, 3)]).split("\n")[5].startswith("   ")
    assert mutate_lines("a: b", [("token", 0, 0, "zz")]) == "zz: b"
    assert mutate_lines("a: b", [("char", 0, 1, "!")]) == "a! b"


# -- (b) structure-aware mutations of the valid template ----------------------------------------

Path_ = tuple[Any, ...]


def all_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    found: list[Path_] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found.append((*prefix, k))
            found.extend(all_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.append((*prefix, i))
            found.extend(all_paths(v, (*prefix, i)))
    return found


def dict_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    found: list[Path_] = [prefix] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for k, v in node.items():
            found.extend(dict_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(dict_paths(v, (*prefix, i)))
    return found


def at(node: Any, path: Path_) -> Any:
    for step in path:
        node = node[step]
    return node


small_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)
new_keys = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_.-]{0,15}", fullmatch=True),
    st.text(min_size=1, max_size=10),
)


def apply_mutation(data: Any, draw: st.DataObject) -> str:
    kind = draw.draw(st.sampled_from(["drop", "replace", "rename", "insert"]), label="kind")
    if kind == "insert":
        path = draw.draw(st.sampled_from(dict_paths(data)), label="map")
        target = at(data, path)
        key = draw.draw(new_keys.filter(lambda k: k not in target), label="key")
        target[key] = draw.draw(small_values, label="value")
        return f"insert {key!r} at {path}"
    paths = all_paths(data)
    if kind == "rename":
        paths = [p for p in paths if isinstance(at(data, p[:-1]), dict)]
    path = draw.draw(st.sampled_from(paths), label="path")
    parent, last = at(data, path[:-1]), path[-1]
    if kind == "drop":
        del parent[last]
    elif kind == "replace":
        parent[last] = draw.draw(small_values, label="value")
    else:
        new = draw.draw(new_keys.filter(lambda k: k not in parent), label="new name")
        parent[new] = parent.pop(last)
    return f"{kind} {path}"


@fuzz_settings(400)
@given(st.data())
def test_structural_mutations_are_reported_inside_the_file(data: st.DataObject) -> None:
    mutated = copy.deepcopy(EXAMPLE_DATA)
    count = data.draw(st.integers(min_value=1, max_value=3), label="mutations")
    steps = [apply_mutation(mutated, data) for _ in range(count)]
    text = dump(mutated)
    with_topology = data.draw(st.booleans(), label="with the sandpit topology")
    result = run_validator({NAME: text}, topology=sandpit() if with_topology else None)
    check_diagnostics(result)
    if text == dump(EXAMPLE_DATA):
        assert result.ok
        return
    if not result.ok:
        inside = [
            d
            for d in result.errors
            if d.position.file == NAME and is_inside(text, d.position.line, d.position.column)
        ]
        assert inside, (steps, [str(d) for d in result.errors])


def test_structural_mutation_is_detected() -> None:
    # Without the properties above noticing anything, a mutation that obviously breaks the
    # template must be reported where it happened.
    mutated = copy.deepcopy(EXAMPLE_DATA)
    mutated["topology_template"]["node_templates"]["origin"]["type"] = "eu.ict-flame.nodes.Nope"
    text = dump(mutated)
    result = validate_texts({NAME: text})
    assert not result.ok
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "eu.ict-flame.nodes.Nope" in s)
    assert any(d.position.line == line for d in result.errors), result.errors


# -- (c) the positioned YAML loader --------------------------------------------------------------

key_text = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters='_-. :#"/'),
    max_size=12,
)
plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
yaml_data = st.recursive(
    plain_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(key_text, children, max_size=4),
    ),
    max_leaves=30,
)


def check_key_positions(value: Any, lines: list[str]) -> int:
    checked = 0
    if isinstance(value, YMap):
        assert set(value.key_pos) == set(value), value
        for key, pos in value.key_pos.items():
            assert 1 <= pos.line <= len(lines), (key, pos)
            line = lines[pos.line - 1]
            assert key in line, (key, pos, line)
            # The column points at the key itself (or the quote that opens it).
            rest = line[pos.column - 1 :]
            rest = rest[1:] if rest[:1] in ("'", '"') else rest
            assert rest.startswith(key), (key, pos, line)
            assert pos.line <= value.at(key).line
            checked += 1 + check_key_positions(value[key], lines)
    elif isinstance(value, YSeq):
        assert len(value.item_pos) == len(value)
        for item in value:
            checked += check_key_positions(item, lines)
    return checked


@fuzz_settings(300)
@given(yaml_data, st.booleans())
def test_load_yaml_matches_safe_load_and_positions_keys(data: Any, flow: bool) -> None:
    text = yaml.safe_dump(data, allow_unicode=True, default_flow_style=None if flow else False)
    sink = DiagnosticSink()
    loaded = load_yaml(text, "data.yaml", sink)
    assert list(sink) == []
    assert loaded == yaml.safe_load(text)
    check_key_positions(loaded, text.splitlines())


def test_key_position_check_is_not_vacuous() -> None:
    text = yaml.safe_dump({"a": {"b c": [{"d": 1}]}, "e": None}, default_flow_style=False)
    loaded = load_yaml(text, "data.yaml", DiagnosticSink())
    assert check_key_positions(loaded, text.splitlines()) == 4
