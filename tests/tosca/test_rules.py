"""Focused tests of the validator's rules, one family at a time, on small inline templates.

Each family has negative tests (the code and the exact caret) and positive tests (the valid
variants a careful reader of TOSCA 1.3 and the FLAME profile expects to pass).
"""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from flame.topology.loader import load_topology
from flame.tosca import EndpointState, ValidationResult, validate, validate_texts
from flame.tosca.validator import base_registry

REPO = Path(__file__).resolve().parents[2]
SANDPIT = REPO / "examples" / "topology" / "sandpit.yaml"
HEAD = "tosca_definitions_version: tosca_simple_yaml_1_3\n"


CARET = "»"  # marks where a diagnostic's caret belongs; removed before validation


def prepare(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The template without its caret marks, and the (line, column) of each mark."""
    lines: list[str] = []
    marks: list[tuple[int, int]] = []
    for number, raw in enumerate(textwrap.dedent(text).lstrip("\n").split("\n"), start=1):
        line = raw
        while CARET in line:
            marks.append((number, line.index(CARET) + 1))
            line = line.replace(CARET, "", 1)
        lines.append(line)
    return "\n".join(lines), marks


def carets(text: str) -> list[tuple[int, int]]:
    return prepare(text)[1]


def write(tmp_path: Path, text: str, name: str = "service.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prepare(text)[0], encoding="utf-8")
    return path


def check(tmp_path: Path, text: str, **kwargs) -> ValidationResult:
    return validate([write(tmp_path, text)], **kwargs)


def found(result: ValidationResult) -> list[tuple[str, int, int]]:
    """(code, line, column) of every diagnostic, in report order."""
    return [(d.code, d.position.line, d.position.column) for d in result.diagnostics]


def expect(result: ValidationResult, text: str, *codes: str) -> None:
    """Exactly these diagnostics, one per caret mark of `text` (in text order)."""
    marks = carets(text)
    assert len(marks) == len(codes), "one caret per expected code"
    wanted = sorted((code, *mark) for code, mark in zip(codes, marks, strict=True))
    assert sorted(found(result)) == wanted, "\n".join(map(str, result.diagnostics))


def assert_clean(result: ValidationResult) -> None:
    assert result.diagnostics == [], "\n".join(map(str, result.diagnostics))


def sf_service(
    extra_properties: str = "",
    *,
    clusters: str = "edge-bristol: {web: connected}",
    metadata: str = "servicefunctionchain: demo",
    more: str = "",
) -> str:
    """A one-SF FLAME service; fragments are inserted with the right indentation."""
    props = textwrap.indent(textwrap.dedent(extra_properties).strip("\n"), " " * 8)
    return (
        HEAD
        + "metadata:\n"
        + textwrap.indent(metadata, "  ")
        + "\ntopology_template:\n"
        + "  node_templates:\n"
        + "    web:\n"
        + "      type: eu.ict-flame.nodes.ServiceFunction\n"
        + "      properties:\n"
        + "        image: web:1.0\n"
        + "        fqdn: web.demo.flame\n"
        + (props + "\n" if props else "")
        + "  policies:\n"
        + "    - initial:\n"
        + "        type: eu.ict-flame.policies.InitialPolicy\n"
        + "        targets: [web]\n"
        + "        properties:\n"
        + "          clusters:\n"
        + textwrap.indent(clusters, " " * 12)
        + "\n"
        + textwrap.indent(textwrap.dedent(more).strip("\n"), "    ")
        + "\n"
    )


# -- files and YAML (E100, E101, E102, E105, E107, E108) --------------------------------------


def test_yaml_syntax_error_points_at_the_problem(tmp_path):
    text = HEAD + "topology_template:\n  node_templates: {a: [1, 2»}\n"
    result = check(tmp_path, text)
    expect(result, text, "E100")
    assert result.model is None


def test_tab_indentation_is_a_syntax_error(tmp_path):
    text = HEAD + "topology_template:\n»\tnode_templates: {}\n"
    expect(check(tmp_path, text), text, "E100")


def test_duplicate_key_in_flow_mapping(tmp_path):
    text = (
        HEAD
        + "topology_template:\n  node_templates:\n    s:\n      type: tosca.nodes.Compute\n"
        + "      capabilities:\n        host:\n          properties: {num_cpus: 1, »num_cpus: 2}\n"
    )
    result = check(tmp_path, text)
    expect(result, text, "E101")
    assert "first defined at line 8" in result.diagnostics[0].message


def test_anchors_and_merge_keys_are_plain_yaml(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n"
        + "    a: &server\n      type: tosca.nodes.Compute\n"
        + "    b:\n      <<: *server\n      description: a copy\n",
    )
    assert_clean(result)


def test_merge_key_may_be_overridden(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n"
        + "    a: &server\n      type: tosca.nodes.Compute\n"
        + "      capabilities: {host: {properties: {num_cpus: 1}}}\n"
        + "    b:\n      <<: *server\n"
        + "      capabilities: {host: {properties: {num_cpus: 4}}}\n",
    )
    assert_clean(result)


def test_missing_file_and_directory_are_unreadable(tmp_path):
    result = validate([tmp_path / "nope.yaml", tmp_path])
    assert sorted(d.code for d in result.diagnostics) == ["E102", "E102"]
    assert result.model is None


def test_non_utf8_file_is_unreadable(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + "description: caf\xe9\n".encode("latin-1"))
    assert [d.code for d in validate([path]).diagnostics] == ["E102"]


def test_non_mapping_scalar_document(tmp_path):
    assert [d.code for d in check(tmp_path, "just a string\n").diagnostics] == ["E107"]


def test_complex_mapping_key(tmp_path):
    text = HEAD + "metadata:\n  »{a: 1}: x\n"
    expect(check(tmp_path, text), text, "E108")


# -- imports and CSAR archives (E103, E104, E105) ----------------------------------------------

TYPES = """\
tosca_definitions_version: tosca_simple_yaml_1_3
node_types:
  demo.nodes.Cache:
    derived_from: tosca.nodes.SoftwareComponent
    properties:
      size: {type: scalar-unit.size}
"""
USES_CACHE = """\
tosca_definitions_version: tosca_simple_yaml_1_3
imports:
  - {imp}
topology_template:
  node_templates:
    server: {{type: tosca.nodes.Compute}}
    cache:
      type: demo.nodes.Cache
      properties: {{size: 1 GB}}
      requirements: [{{host: server}}]
"""


def test_import_is_relative_to_the_importing_file(tmp_path):
    write(tmp_path, TYPES, "defs/types.yaml")
    write(
        tmp_path,
        HEAD + "imports: [types.yaml]\n",
        "defs/all.yaml",
    )
    service = write(tmp_path, USES_CACHE.format(imp="defs/all.yaml"))
    assert_clean(validate([service]))


def test_import_cycle_terminates(tmp_path):
    write(tmp_path, TYPES + "imports: [service.yaml]\n", "types.yaml")
    service = write(tmp_path, USES_CACHE.format(imp="types.yaml"))
    assert_clean(validate([service]))


def test_original_flame_profile_imports_resolve_to_the_builtin_profile(tmp_path):
    result = check(
        tmp_path,
        sf_service().replace(
            "metadata:", "imports:\n  - flame_definitions-1.0.0.yaml\nmetadata:", 1
        ),
    )
    assert_clean(result)


def test_missing_import_suggests_a_near_name(tmp_path):
    write(tmp_path, TYPES, "types.yaml")
    result = check(tmp_path, USES_CACHE.format(imp="tyeps.yaml"))
    assert ("E103", 3, 5) in found(result)
    assert "did you mean 'types.yaml'?" in (result.diagnostics[0].hint or "")


def test_uploaded_text_cannot_import_files():
    result = validate_texts({"up.yaml": HEAD + "imports: [types.yaml]\n"})
    assert found(result) == [("E103", 2, 11)]
    assert "CSAR" in (result.diagnostics[0].hint or "")


@pytest.mark.parametrize(
    "entry",
    ["http://example.com/types.yaml", "{file: 'https://example.com/t.yaml'}", "git://x/t.yaml"],
)
def test_network_imports_are_refused(tmp_path, entry):
    result = check(tmp_path, HEAD + f"imports:\n  - {entry}\n")
    assert [d.code for d in result.diagnostics] == ["E104"]


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_csar_with_meta_and_relative_imports_is_valid(tmp_path):
    archive = _zip(
        tmp_path / "svc.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": "TOSCA-Meta-File-Version: 1.1\n"
            "Entry-Definitions: Definitions/service.yaml\n",
            "Definitions/service.yaml": USES_CACHE.format(imp="types/cache.yaml"),
            "Definitions/types/cache.yaml": TYPES,
        },
    )
    assert_clean(validate([archive]))


def test_csar_without_meta_uses_its_single_root_template(tmp_path):
    archive = _zip(
        tmp_path / "svc.csar",
        {"service.yaml": USES_CACHE.format(imp="types.yaml"), "types.yaml": TYPES},
    )
    assert len([n for n in zipfile.ZipFile(archive).namelist() if "/" not in n]) == 2
    result = validate([archive])
    # two YAML files at the root and no TOSCA.meta: ambiguous
    assert [d.code for d in result.diagnostics] == ["E105"]
    single = _zip(tmp_path / "one.csar", {"service.yaml": sf_service()})
    assert_clean(validate([single]))


def test_csar_positions_name_the_file_inside_the_archive(tmp_path):
    archive = _zip(tmp_path / "svc.csar", {"service.yaml": HEAD + "topology_templat: {}\n"})
    (diagnostic,) = validate([archive]).diagnostics
    assert diagnostic.code == "E200"
    assert diagnostic.position.file == f"{archive}!service.yaml"
    assert (diagnostic.position.line, diagnostic.position.column) == (2, 1)


# -- tosca_definitions_version (E106) ------------------------------------------------------------


@pytest.mark.parametrize(
    "version",
    [
        "tosca_simple_yaml_1_0",
        "tosca_simple_yaml_1_1",
        "tosca_simple_yaml_1_2",
        "tosca_simple_yaml_1_3",
        "tosca_simple_profile_for_nfv_1_0_0",
    ],
)
def test_supported_versions(tmp_path, version):
    assert_clean(check(tmp_path, f"tosca_definitions_version: {version}\n"))


@pytest.mark.parametrize("version", ["1.3", "tosca_simple_yaml_2_0", "'tosca_simple_yaml_1_3 '"])
def test_unsupported_versions(tmp_path, version):
    result = check(tmp_path, f"tosca_definitions_version: {version}\n")
    assert found(result) == [("E106", 1, 28)]


# -- document structure (E200, E201, E202, E203) -------------------------------------------------


def test_unknown_key_suggests_the_allowed_one(tmp_path):
    text = HEAD + "topology_template:\n  »node_templtes: {}\n"
    result = check(tmp_path, text)
    expect(result, text, "E200")
    assert result.diagnostics[0].hint == "did you mean 'node_templates'?"


def test_unknown_key_without_a_near_name_lists_the_allowed_keys(tmp_path):
    result = check(tmp_path, HEAD + "topology_template:\n  zzz: {}\n")
    assert "allowed keys" in (result.diagnostics[0].hint or "")


def test_tosca_1_0_top_level_template_keys_are_accepted(tmp_path):
    assert_clean(check(tmp_path, HEAD + "template_name: demo\ntemplate_version: 1.0.0\n"))


@pytest.mark.parametrize(
    "section",
    ["node_templates: »[a]", "inputs: »3", "policies: {a: »1}", "outputs: {o: »x}"],
)
def test_wrong_shape(tmp_path, section):
    text = HEAD + f"topology_template:\n  {section}\n"
    expect(check(tmp_path, text), text, "E201")


def test_node_template_without_type(tmp_path):
    text = HEAD + "topology_template:\n  node_templates:\n    »a: {}\n"
    expect(check(tmp_path, text), text, "E202")


def test_policy_without_type_is_reported_at_its_name(tmp_path):
    text = HEAD + "topology_template:\n  policies:\n    - »p:\n        targets: []\n"
    expect(check(tmp_path, text), text, "E202")


@pytest.mark.parametrize("name", ["vod", "vod-1.2_b", "A1"])
def test_valid_chain_names(tmp_path, name):
    assert_clean(check(tmp_path, sf_service(metadata=f"servicefunctionchain: {name}")))


@pytest.mark.parametrize("name", ["'-vod'", "vod/1", "42", "'a b'"])
def test_bad_chain_names(tmp_path, name):
    text = sf_service(metadata=f"servicefunctionchain: »{name}")
    expect(check(tmp_path, text), text, "E203")


# -- types (E300, E301, E302, E304) -------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["tosca.nodes.Compute", "Compute", "tosca:Compute"])
def test_normative_short_type_names(tmp_path, type_name):
    result = check(
        tmp_path,
        HEAD + f"topology_template:\n  node_templates:\n    s:\n      type: {type_name}\n",
    )
    assert_clean(result)


def test_short_names_work_for_every_kind(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "node_types:\n  demo.nodes.App:\n    derived_from: SoftwareComponent\n"
        + "    properties:\n      creds: {type: Credential, required: false}\n"
        + "    capabilities:\n      api: {type: tosca:Endpoint}\n"
        + "topology_template:\n  node_templates:\n    s: {type: Compute}\n"
        + "    a:\n      type: demo.nodes.App\n"
        + "      requirements:\n        - host: {node: s, relationship: HostedOn}\n"
        + "  policies:\n    - p: {type: Placement, targets: [a]}\n",
    )
    assert_clean(result)


def test_unknown_node_type_hint(tmp_path):
    text = HEAD + "topology_template:\n  node_templates:\n    s: {type: »tosca:Compte}\n"
    result = check(tmp_path, text)
    expect(result, text, "E300")
    assert result.diagnostics[0].hint == "did you mean 'tosca:Compute'?"


def test_unknown_property_type_suggests_a_primitive(tmp_path):
    text = (
        HEAD + "data_types:\n  demo.T:\n    derived_from: tosca.datatypes.Root\n"
        "    properties:\n      n: {type: »intger}\n"
    )
    result = check(tmp_path, text)
    expect(result, text, "E300")
    assert result.diagnostics[0].hint == "did you mean 'integer'?"


def test_unknown_input_type_suggests_a_primitive(tmp_path):
    text = HEAD + "topology_template:\n  inputs:\n    n: {type: »strng}\n"
    result = check(tmp_path, text)
    expect(result, text, "E300")
    assert result.diagnostics[0].hint == "did you mean 'string'?"


def test_a_type_deriving_from_itself(tmp_path):
    text = HEAD + "node_types:\n  demo.nodes.A:\n    derived_from: »demo.nodes.A\n"
    expect(check(tmp_path, text), text, "E301")


def test_three_type_cycle_is_reported_once(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "capability_types:\n"
        + "  demo.A: {derived_from: demo.B}\n"
        + "  demo.B: {derived_from: demo.C}\n"
        + "  demo.C: {derived_from: demo.A}\n",
    )
    assert [d.code for d in result.diagnostics] == ["E301"]


def test_wrong_kind_of_parent_type(tmp_path):
    text = HEAD + "node_types:\n  demo.nodes.A:\n    derived_from: »tosca.capabilities.Root\n"
    result = check(tmp_path, text)
    expect(result, text, "E302")
    assert result.diagnostics[0].hint == "did you mean 'tosca.nodes.Root'?"


@pytest.mark.parametrize("occurrences", ["[0, 0]", "[-1, 1]", "[1]", "UNBOUNDED", "[true, 2]"])
def test_bad_occurrences(tmp_path, occurrences):
    result = check(
        tmp_path,
        HEAD + "node_types:\n  demo.nodes.A:\n    derived_from: tosca.nodes.Root\n"
        f"    capabilities:\n      c: {{type: tosca.capabilities.Node, occurrences: {occurrences}}}\n",
    )
    assert [d.code for d in result.diagnostics] == ["E304"]


@pytest.mark.parametrize("occurrences", ["[0, UNBOUNDED]", "[1, 1]", "[0, 3]", "[2, 2]"])
def test_good_occurrences(tmp_path, occurrences):
    result = check(
        tmp_path,
        HEAD + "node_types:\n  demo.nodes.A:\n    derived_from: tosca.nodes.Root\n"
        f"    capabilities:\n      c: {{type: tosca.capabilities.Node, occurrences: {occurrences}}}\n",
    )
    assert_clean(result)


# -- values (E400 .. E406) -----------------------------------------------------------------------

VALUE_TYPES = """\
tosca_definitions_version: tosca_simple_yaml_1_3
node_types:
  demo.nodes.Values:
    derived_from: tosca.nodes.Root
    properties:
      value:
        type: {type}
        constraints: {constraints}
topology_template:
  node_templates:
    v:
      type: demo.nodes.Values
      properties:
        value: {value}
"""


def values(tmp_path: Path, type_: str, value: str, constraints: str = "[]") -> ValidationResult:
    return check(tmp_path, VALUE_TYPES.format(type=type_, value=value, constraints=constraints))


@pytest.mark.parametrize(
    ("type_", "value", "constraints"),
    [
        ("scalar-unit.size", "2 gb", "[{greater_or_equal: 1 GB}]"),
        ("scalar-unit.size", "2 GiB", "[{in_range: [1 GB, 4 GB]}]"),
        ("scalar-unit.size", "1536 mib", "[{less_than: 2 GB}]"),
        ("scalar-unit.time", "500 MS", "[{less_or_equal: 1 s}]"),
        ("scalar-unit.time", "2 h", "[{greater_than: 90 m}]"),
        ("scalar-unit.frequency", "2.4 ghz", "[{greater_than: 1 GHz}]"),
        ("scalar-unit.bitrate", "100 Mbps", "[{less_than: 1 Gbps}]"),
        ("range", "[10, 20]", "[{in_range: [1, 65535]}]"),
        ("range", "[1, UNBOUNDED]", "[{in_range: [1, UNBOUNDED]}]"),
        ("integer", "5", "[{in_range: [1, UNBOUNDED]}]"),
        ("float", "0.5", "[{in_range: [0, 1]}]"),
        ("string", "abc", "[{length: 3}, {pattern: '[a-c]+'}, {valid_values: [abc, d]}]"),
        ("string", "abc", "[{min_length: 1}, {max_length: 3}]"),
        pytest.param(
            "version",
            "1.2.3",
            "[{greater_than: 1.0}, {less_than: '1.10'}]",
        ),
        ("timestamp", "2026-11-23T19:00:00Z", "[]"),
        ("boolean", "false", "[{equal: false}]"),
        ("tosca.datatypes.network.PortDef", "8080", "[]"),
        ("list", "[1, 2]", "[{min_length: 2}]"),
        ("map", "{a: 1}", "[{max_length: 1}]"),
        ("any", "{a: [1, b]}", "[]"),
    ],
)
def test_valid_values(tmp_path, type_, value, constraints):
    assert_clean(values(tmp_path, type_, value, constraints))


@pytest.mark.parametrize(
    ("type_", "value", "constraints", "code"),
    [
        ("scalar-unit.size", "2 gbytes", "[]", "E404"),
        ("scalar-unit.size", "2", "[]", "E404"),
        ("scalar-unit.size", "GB", "[]", "E404"),
        ("scalar-unit.bitrate", "100 mbps", "[]", "E404"),
        ("scalar-unit.size", "512 MB", "[{greater_or_equal: 1 GB}]", "E403"),
        ("range", "[10, 70000]", "[{in_range: [1, 65535]}]", "E403"),
        pytest.param(
            "range",
            "[10, UNBOUNDED]",
            "[{in_range: [1, 65535]}]",
            "E403",
        ),
        ("range", "[20, 10]", "[]", "E402"),
        ("range", "10", "[]", "E402"),
        ("integer", "'5'", "[]", "E402"),
        ("integer", "true", "[]", "E402"),
        ("integer", "1.5", "[]", "E402"),
        ("float", "x", "[]", "E402"),
        ("boolean", "'yes'", "[]", "E402"),
        ("string", "12", "[]", "E402"),
        ("version", "one", "[]", "E402"),
        ("timestamp", "yesterday", "[]", "E402"),
        ("list", "{a: 1}", "[]", "E402"),
        ("map", "[1]", "[]", "E402"),
        ("tosca.datatypes.network.PortDef", "0", "[]", "E403"),
        ("string", "abcd", "[{max_length: 3}]", "E403"),
        ("string", "abc", "[{pattern: '[a-b]+'}]", "E403"),
        ("integer", "3", "[{valid_values: [1, 2]}]", "E403"),
        ("integer", "3", "[{equal: 2}]", "E403"),
    ],
)
def test_invalid_values(tmp_path, type_, value, constraints, code):
    result = values(tmp_path, type_, value, constraints)
    assert found(result) == [(code, 14, 16)]


def test_data_type_fields_are_checked(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "data_types:\n  demo.Rect:\n    derived_from: tosca.datatypes.Root\n"
        + "    properties:\n      w: {type: integer}\n      h: {type: integer, default: 1}\n"
        + "node_types:\n  demo.nodes.N:\n    derived_from: tosca.nodes.Root\n"
        + "    properties:\n      r: {type: demo.Rect}\n"
        + "      rs: {type: list, entry_schema: {type: demo.Rect}}\n"
        + "topology_template:\n  node_templates:\n    n:\n      type: demo.nodes.N\n"
        + "      properties:\n        r: {w: 1, d: 2}\n        rs: [{w: 1}, {h: 2}, 3]\n",
    )
    assert found(result) == [
        ("E400", 19, 19),  # unknown field d
        ("E401", 20, 22),  # {h: 2} lacks w
        ("E402", 20, 30),  # 3 is no Rect
    ]


def test_map_entry_and_key_schemas(tmp_path):
    result = check(
        tmp_path,
        text := HEAD
        + "node_types:\n  demo.nodes.N:\n    derived_from: tosca.nodes.Root\n"
        + "    properties:\n      m:\n        type: map\n"
        + "        key_schema: {type: string, constraints: [{pattern: '[a-z]+'}]}\n"
        + "        entry_schema: {type: integer}\n"
        + "topology_template:\n  node_templates:\n    n:\n      type: demo.nodes.N\n"
        + "      properties:\n        m: {ok: 1, »BAD: 2, fine: »x}\n",
    )
    expect(result, text, "E403", "E402")


@pytest.mark.parametrize(
    "constraint",
    [
        "{»greater_then: 1}",
        "{in_range: »5}",
        "{in_range: »[1, 2, 3]}",
        "{valid_values: »a}",
        "{length: »-1}",
        "{min_length: »x}",
        "{pattern: »'('}",
        "{pattern: »5}",
        "»{a: 1, b: 2}",
        "»just_a_string",
    ],
)
def test_bad_constraints(tmp_path, constraint):
    text = (
        HEAD + "node_types:\n  demo.nodes.N:\n    derived_from: tosca.nodes.Root\n"
        f"    properties:\n      p: {{type: integer, constraints: [{constraint}]}}\n"
    )
    expect(check(tmp_path, text), text, "E405")


def test_unknown_attribute(tmp_path):
    result = check(
        tmp_path,
        HEAD + "topology_template:\n  node_templates:\n    s:\n      type: tosca.nodes.Compute\n"
        "      attributes: {public_adress: 10.0.0.1, private_address: 10.0.0.2}\n",
    )
    assert found(result) == [("E406", 6, 20)]
    assert result.diagnostics[0].hint == "did you mean 'public_address'?"


def test_property_defaults_in_definitions_are_checked(tmp_path):
    text = (
        HEAD + "node_types:\n  demo.nodes.N:\n    derived_from: tosca.nodes.Root\n"
        "    properties:\n      p: {type: scalar-unit.time, default: »10 parsecs}\n"
    )
    expect(check(tmp_path, text), text, "E404")


# -- requirements and capabilities (E500 .. E508) ------------------------------------------------

HOSTED = HEAD + "topology_template:\n  node_templates:\n{nodes}"


def hosted_text(nodes: str) -> str:
    return HOSTED.format(nodes=textwrap.indent(textwrap.dedent(nodes), "    "))


def hosted(tmp_path: Path, nodes: str) -> ValidationResult:
    return check(tmp_path, hosted_text(nodes))


def test_requirement_by_template_name(tmp_path):
    result = hosted(
        tmp_path,
        """\
        server: {type: tosca.nodes.Compute}
        agent:
          type: tosca.nodes.SoftwareComponent
          requirements: [{host: server}]
        """,
    )
    assert_clean(result)


def test_requirement_target_by_type(tmp_path):
    result = hosted(
        tmp_path,
        """\
        server: {type: tosca.nodes.Compute}
        agent:
          type: tosca.nodes.SoftwareComponent
          requirements:
            - host: tosca.nodes.Compute
            - dependency: {node: Compute, capability: tosca.capabilities.Node}
        """,
    )
    assert_clean(result)


def test_implicit_requirement_is_satisfied_by_the_only_candidate(tmp_path):
    result = hosted(
        tmp_path,
        """\
        server: {type: tosca.nodes.Compute}
        agent: {type: tosca.nodes.SoftwareComponent}
        """,
    )
    assert_clean(result)


NODE_FILTER_NODES = """\
small:
  type: tosca.nodes.Compute
  capabilities:
    host: {{properties: {{num_cpus: 1, mem_size: 1 GB}}}}
    os: {{properties: {{type: linux}}}}
big:
  type: tosca.nodes.Compute
  capabilities:
    host: {{properties: {{num_cpus: 8, mem_size: 32 GB}}}}
db:
  type: tosca.nodes.DBMS
  properties: {{port: 5432}}
  requirements:
    - host:
        node: {target}
        node_filter:
{filter}
"""


def node_filter_text(target: str, filter_: str) -> str:
    nodes = NODE_FILTER_NODES.format(
        target=target, filter=textwrap.indent(textwrap.dedent(filter_), " " * 10)
    )
    return hosted_text(nodes)


def node_filter(tmp_path: Path, target: str, filter_: str) -> ValidationResult:
    return check(tmp_path, node_filter_text(target, filter_))


@pytest.mark.parametrize(
    "filter_",
    [
        """\
        capabilities:
          - host:
              properties:
                - num_cpus: {greater_or_equal: 4}
                - mem_size: [{greater_or_equal: 16 GB}, {less_than: 1 TB}]
        """,
        """\
        capabilities:
          - tosca.capabilities.Compute:
              properties: [{num_cpus: {in_range: [2, 16]}}]
        """,
    ],
)
def test_node_filter_matches_named_target(tmp_path, filter_):
    assert_clean(node_filter(tmp_path, "big", filter_))


def test_node_filter_mismatch_on_named_target(tmp_path):
    text = node_filter_text(
        "»small",
        "capabilities:\n  - host:\n      properties:\n        - mem_size: {greater_or_equal: 16 GB}\n",
    )
    expect(check(tmp_path, text), text, "E506")


def test_node_filter_selects_among_candidates_by_type(tmp_path):
    result = node_filter(
        tmp_path,
        "tosca.nodes.Compute",
        "capabilities:\n  - host:\n      properties:\n        - num_cpus: {greater_or_equal: 4}\n",
    )
    assert_clean(result)


def test_node_filter_on_node_properties(tmp_path):
    nodes = """\
    server: {type: tosca.nodes.Compute}
    pg:
      type: tosca.nodes.DBMS
      properties: {port: 5432}
      requirements: [{host: server}]
    db:
      type: tosca.nodes.Database
      properties: {name: media}
      requirements:
        - host:
            node: pg
            node_filter:
              properties:
                - port: {equal: %s}
    """
    assert_clean(hosted(tmp_path, nodes % "5432"))
    result = hosted(tmp_path, nodes % "3306")
    assert [d.code for d in result.diagnostics] == ["E506"]


def test_node_filter_without_a_match_among_candidates(tmp_path):
    result = node_filter(
        tmp_path,
        "tosca.nodes.Compute",
        "capabilities:\n  - host:\n      properties:\n        - num_cpus: {greater_or_equal: 64}\n",
    )
    assert [d.code for d in result.diagnostics] == ["E503"]


def test_requirement_occurrences_upper_bound(tmp_path):
    text = hosted_text(
        """\
        a: {type: tosca.nodes.Compute}
        b: {type: tosca.nodes.Compute}
        agent:
          type: tosca.nodes.SoftwareComponent
          requirements: [{host: a}, {»host: b}]
        """,
    )
    expect(check(tmp_path, text), text, "E504")


def test_unbounded_requirements_may_repeat(tmp_path):
    result = hosted(
        tmp_path,
        """\
        a: {type: tosca.nodes.Compute}
        b: {type: tosca.nodes.Compute}
        c:
          type: tosca.nodes.Compute
          requirements: [{dependency: a}, {dependency: b}]
        """,
    )
    assert_clean(result)


def test_valid_source_types_of_a_capability(tmp_path):
    text = hosted_text(
        """\
        server: {type: tosca.nodes.Compute}
        web_server:
          type: tosca.nodes.WebServer
          requirements: [{host: server}]
        db_host:
          type: tosca.nodes.DBMS
          requirements: [{host: »web_server}]
        """,
    )
    # WebServer's host capability accepts only WebApplication sources
    expect(check(tmp_path, text), text, "E502")


def test_requirement_to_unknown_and_broken_templates(tmp_path):
    text = hosted_text(
        """\
        broken: {type: »tosca.nodes.Nope}
        agent:
          type: tosca.nodes.SoftwareComponent
          requirements: [{host: broken}]
        other:
          type: tosca.nodes.SoftwareComponent
          requirements: [{host: »nowhere}]
        """,
    )
    # the broken template is reported once, where its type is; a reference to it is not an error
    expect(check(tmp_path, text), text, "E300", "E501")


def test_relationship_by_type_and_by_template(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n"
        + "    server: {type: tosca.nodes.Compute}\n"
        + "    a:\n      type: tosca.nodes.SoftwareComponent\n"
        + "      requirements:\n"
        + "        - host: {node: server, relationship: tosca.relationships.HostedOn}\n"
        + "        - dependency: {node: server, relationship: link}\n"
        + "  relationship_templates:\n    link:\n      type: tosca.relationships.DependsOn\n",
    )
    assert_clean(result)


def test_relationship_that_cannot_target_the_capability(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n"
        + "    server: {type: tosca.nodes.Compute}\n"
        + "    a:\n      type: tosca.nodes.SoftwareComponent\n"
        + "      requirements:\n"
        + "        - host: server\n"
        + "        - dependency: {node: server, relationship: tosca.relationships.AttachesTo}\n",
    )
    assert [d.code for d in result.diagnostics] == ["E507"]


def test_unknown_capability_and_capability_properties(tmp_path):
    text = hosted_text(
        """\
        server:
          type: tosca.nodes.Compute
          capabilities:
            host: {properties: {»num_cpu: 2}}
            »hots: {properties: {num_cpus: 2}}
        """,
    )
    expect(check(tmp_path, text), text, "E400", "E505")


def test_standard_interface_is_known(tmp_path):
    text = hosted_text(
        """\
        server:
          type: tosca.nodes.Compute
          interfaces:
            Standard: {create: create.sh}
            »Configure: {}
        """,
    )
    expect(check(tmp_path, text), text, "E508")


def test_sf_requirements_are_not_forced(tmp_path):
    # upstream has occurrences [0, UNBOUNDED]: an SF without one is fine
    assert_clean(check(tmp_path, sf_service()))


# -- functions, inputs, outputs (E600 .. E603) ---------------------------------------------------

FUNCTIONS = """\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  inputs:
    cpus: {{type: integer, default: 2}}
    names: {{type: list, entry_schema: {{type: string}}, default: [a, b]}}
  node_templates:
    server:
      type: tosca.nodes.Compute
      capabilities:
        host:
          properties: {{num_cpus: {{get_input: cpus}}, mem_size: 1 GB}}
    store:
      type: tosca.nodes.Storage.ObjectStorage
      properties: {{name: {{get_attribute: [server, tosca_name]}}}}
  outputs:
    out:
      value: {value}
"""


@pytest.mark.parametrize(
    "value",
    [
        "{get_property: [server, host, num_cpus]}",
        "{get_property: [server, host, mem_size]}",
        "{get_attribute: [server, public_address]}",
        "{get_attribute: [server, endpoint, ip_address]}",
        "{get_attribute: [server, host, num_cpus]}",
        "{get_property: [store, name]}",
        "{get_input: cpus}",
        "{get_input: [names, 0]}",
        "{concat: [a, {get_attribute: [server, private_address]}, b]}",
        "{join: [[a, {get_input: cpus}], ',']}",
        "{token: [{get_attribute: [server, public_address]}, '.', 0]}",
        "{get_nodes_of_type: tosca.nodes.Compute}",
        "{get_operation_output: [server, Standard, create, out]}",
        "[{get_input: cpus}, {get_property: [server, host, num_cpus]}]",
    ],
)
def test_valid_functions(tmp_path, value):
    assert_clean(check(tmp_path, FUNCTIONS.format(value=value)))


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("{get_property: [server, host, num_cpu]}", "E602"),
        ("{get_property: [server, nope]}", "E602"),
        ("{get_property: [svr, host, num_cpus]}", "E602"),
        ("{get_property: [SELF, host]}", "E602"),
        ("{get_attribute: [server, public_adress]}", "E603"),
        ("{get_attribute: [server, endpoint, ip_adress]}", "E603"),
        ("{get_input: cpu}", "E601"),
        ("{get_input: [1]}", "E600"),
        ("{concat: x}", "E600"),
        ("{join: a}", "E600"),
        ("{token: [a, b]}", "E600"),
        ("{get_property: server}", "E600"),
        ("{get_nodes_of_type: [a]}", "E600"),
        ("{get_nodes_of_type: tosca.nodes.Compte}", "E300"),
        ("{get_operation_output: [server, Standard]}", "E600"),
        ("{get_artifact: [server]}", "E600"),
        ("[{concat: [a, {get_input: nope}]}]", "E601"),
    ],
)
def test_invalid_functions(tmp_path, value, code):
    result = check(tmp_path, FUNCTIONS.format(value=value))
    assert [d.code for d in result.diagnostics] == [code]
    assert result.diagnostics[0].position.line == 17


def test_function_argument_hints(tmp_path):
    result = check(tmp_path, FUNCTIONS.format(value="{get_input: cpu}"))
    assert result.diagnostics[0].hint == "did you mean 'cpus'?"
    result = check(tmp_path, FUNCTIONS.format(value="{get_property: [server, host, num_cpu]}"))
    assert result.diagnostics[0].hint == "did you mean 'num_cpus'?"


def test_functions_in_properties_are_checked(tmp_path):
    text = FUNCTIONS.format(value="1").replace("{get_input: cpus}", "»{get_input: cpuz}")
    expect(check(tmp_path, text), text, "E601")


def test_input_default_is_checked_against_its_type(tmp_path):
    text = FUNCTIONS.format(value="1").replace("default: 2}", "default: »two}")
    expect(check(tmp_path, text), text, "E402")


def test_get_input_resolves_fqdn_from_passed_inputs(tmp_path):
    text = (
        sf_service()
        .replace("fqdn: web.demo.flame", "fqdn: {concat: [web., {get_input: domain}]}")
        .replace(
            "topology_template:\n", "topology_template:\n  inputs:\n    domain: {type: string}\n"
        )
    )
    path = write(tmp_path, text)
    result = validate([path], inputs={"domain": "example.flame"})
    assert_clean(result)
    assert result.model is not None
    assert result.model.service_functions[0].fqdn == "web.example.flame"
    # without the value and without a default the FQDN cannot be known before deployment
    result = validate([path])
    assert [d.code for d in result.errors] == ["E600"]


def test_get_input_default_resolves_fqdn(tmp_path):
    text = sf_service().replace("fqdn: web.demo.flame", "fqdn: {get_input: domain}")
    text = text.replace(
        "topology_template:\n",
        "topology_template:\n  inputs:\n    domain: {type: string, default: www.demo.flame}\n",
    )
    result = check(tmp_path, text)
    assert result.model is not None
    assert result.model.service_functions[0].fqdn == "www.demo.flame"
    result = validate([tmp_path / "service.yaml"], inputs={"domain": "tv.demo.flame"})
    assert result.model is not None
    assert result.model.service_functions[0].fqdn == "tv.demo.flame"


def test_passed_input_is_still_checked_as_an_fqdn(tmp_path):
    text = sf_service().replace("fqdn: web.demo.flame", "fqdn: {get_input: domain}")
    text = text.replace(
        "topology_template:\n", "topology_template:\n  inputs:\n    domain: {type: string}\n"
    )
    result = validate([write(tmp_path, text)], inputs={"domain": "NOT A NAME"})
    assert [d.code for d in result.errors] == ["E815"]


def test_environment_resolves_inputs_and_own_properties(tmp_path):
    text = sf_service(
        """\
        environment:
          SELF_NAME: {get_property: [SELF, fqdn]}
          URL: {concat: ["http://", {get_input: host}, ":8080"]}
          DEBUG: "true"
        """
    ).replace(
        "topology_template:\n",
        "topology_template:\n  inputs:\n    host: {type: string, default: origin.flame}\n",
    )
    result = check(tmp_path, text)
    assert result.model is not None
    assert dict(result.model.service_functions[0].environment) == {
        "SELF_NAME": "web.demo.flame",
        "URL": "http://origin.flame:8080",
        "DEBUG": "true",
    }


def test_environment_needing_deployment_values(tmp_path):
    result = check(
        tmp_path,
        sf_service("environment:\n  ID: {get_attribute: [SELF, tosca_id]}\n"),
    )
    assert found(result) == [("E600", 12, 15)]


def test_outputs_need_a_value(tmp_path):
    result = check(
        tmp_path, FUNCTIONS.format(value="1").replace("      value: 1\n", "      description: x\n")
    )
    assert [d.code for d in result.diagnostics] == ["E202"]


# -- groups and policies (E700, E701, E702) ------------------------------------------------------


def test_group_members_and_policy_targets(tmp_path):
    text = (
        HEAD
        + "topology_template:\n  node_templates:\n    s: {type: tosca.nodes.Compute}\n"
        + "  groups:\n    g: {type: tosca.groups.Root, members: [s, »t]}\n"
        + "  policies:\n    - p: {type: tosca.policies.Placement, targets: [g, s, »h]}\n"
    )
    expect(check(tmp_path, text), text, "E700", "E700")


def test_groups_cannot_be_group_members(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n    s: {type: tosca.nodes.Compute}\n"
        + "  groups:\n    g: {type: tosca.groups.Root, members: [s]}\n"
        + "    h: {type: tosca.groups.Root, members: [g]}\n",
    )
    assert [d.code for d in result.diagnostics] == ["E700"]


def test_group_type_members_restrict_the_node_types(tmp_path):
    text = (
        HEAD
        + "group_types:\n  demo.groups.Servers:\n    derived_from: tosca.groups.Root\n"
        + "    members: [tosca.nodes.Compute]\n"
        + "topology_template:\n  node_templates:\n    s: {type: tosca.nodes.Compute}\n"
        + "    a:\n      type: tosca.nodes.SoftwareComponent\n      requirements: [{host: s}]\n"
        + "  groups:\n    g: {type: demo.groups.Servers, members: [s, »a]}\n"
    )
    expect(check(tmp_path, text), text, "E701")


def test_duplicate_policy_names_in_the_list_form(tmp_path):
    text = (
        HEAD
        + "topology_template:\n  policies:\n    - p: {type: tosca.policies.Root}\n"
        + "    - »p: {type: tosca.policies.Root}\n"
    )
    expect(check(tmp_path, text), text, "E702")


def test_policies_in_the_map_form(tmp_path):
    result = check(
        tmp_path,
        HEAD
        + "topology_template:\n  node_templates:\n    s: {type: tosca.nodes.Compute}\n"
        + "  policies:\n    p: {type: tosca.policies.Placement, targets: [s]}\n",
    )
    assert_clean(result)


def test_a_service_function_in_two_documents(tmp_path):
    first = write(tmp_path, sf_service(), "a.yaml")
    text = sf_service().replace("    web:", "    »web:").split("  policies:")[0]
    second = write(tmp_path, text, "b.yaml")
    result = validate([first, second])
    expect(result, text, "E702")
    assert result.diagnostics[0].position.file == str(second)


# -- FLAME profile (E800 .. E820, W900 .. W903) --------------------------------------------------


def test_the_example_service_is_valid_with_and_without_topology():
    example = REPO / "examples" / "vod-edge-cache" / "service.yaml"
    assert_clean(validate([example]))
    result = validate([example], topology=load_topology(SANDPIT))
    assert_clean(result)
    assert result.model is not None
    assert result.model.sfc == "vod"
    assert result.model.sfci == "vod-1"


def test_sfci_defaults_to_the_sfc(tmp_path):
    result = check(tmp_path, sf_service())
    assert result.model is not None
    assert (result.model.sfc, result.model.sfci) == ("demo", "demo")


def test_short_metadata_keys(tmp_path):
    result = check(tmp_path, sf_service(metadata="sfc: demo\nsfci: demo-7"))
    assert result.model is not None
    assert (result.model.sfc, result.model.sfci) == ("demo", "demo-7")


def test_missing_sfc(tmp_path):
    text = sf_service(metadata="template_name: demo").replace("metadata:", "»metadata:")
    expect(check(tmp_path, text), text, "E813")


def test_missing_sfc_in_flow_metadata(tmp_path):
    text = sf_service().replace("metadata:\n  servicefunctionchain: demo", "metadata: »{a: b}")
    expect(check(tmp_path, text), text, "E813")


def test_a_plain_tosca_template_is_no_flame_service(tmp_path):
    result = check(
        tmp_path, HEAD + "topology_template:\n  node_templates:\n    s: {type: Compute}\n"
    )
    assert_clean(result)
    assert result.model is None


@pytest.mark.parametrize("runtime", ["process", "kubernetes"])
def test_default_runtimes(tmp_path, runtime):
    result = check(tmp_path, sf_service(f"runtime: {runtime}"))
    assert result.model is not None
    assert result.model.service_functions[0].runtime == runtime


def test_runtimes_of_the_platform(tmp_path):
    text = sf_service("runtime: »kvm")
    path = write(tmp_path, text)
    expect(validate([path]), text, "E800")
    assert_clean(validate([path], runtimes={"process", "kvm"}))
    result = validate([path], runtimes={"process"})
    assert [d.code for d in result.diagnostics] == ["E800"]


@pytest.mark.parametrize(
    "fqdn",
    ["a.b", "web.demo.flame", "x-1.y-2.example", "a" * 63 + ".flame"],
)
def test_valid_fqdns(tmp_path, fqdn):
    assert_clean(check(tmp_path, sf_service().replace("web.demo.flame", fqdn)))


@pytest.mark.parametrize(
    "fqdn",
    ["web", "Web.demo", "web_1.demo", "-web.demo", "web.demo.", "a" * 64 + ".flame", "a b.c"],
)
def test_invalid_fqdns(tmp_path, fqdn):
    result = check(tmp_path, sf_service().replace("web.demo.flame", f"'{fqdn}'"))
    assert found(result) == [("E815", 10, 15)]


def test_ports_and_health_check_in_the_model(tmp_path):
    result = check(
        tmp_path,
        sf_service(
            """\
            ports:
              - {name: http, port: 8080}
              - {name: admin, port: 9090, protocol: https}
            health_check: {port: admin, interval: 500 ms}
            """
        ),
    )
    assert result.model is not None
    sf = result.model.service_functions[0]
    assert [(p.port, p.protocol, p.name) for p in sf.ports] == [
        (8080, "http", "http"),
        (9090, "https", "admin"),
    ]
    assert sf.health_check is not None
    assert (sf.health_check.port, sf.health_check.interval_s) == ("admin", 0.5)


def test_duplicate_ports(tmp_path):
    text = sf_service("ports: [{port: 8080}, {port: 9090}, »{port: 8080, protocol: https}]")
    expect(check(tmp_path, text), text, "E819")


def test_same_port_number_over_tcp_and_udp(tmp_path):
    result = check(
        tmp_path,
        sf_service("ports: [{port: 443, protocol: https}, {port: 443, protocol: udp}]"),
    )
    assert_clean(result)


def test_endpoint_states(tmp_path):
    result = check(
        tmp_path,
        sf_service(
            clusters="edge-bristol: {web: placed}\nedge-bath: {web: booted}\n"
            "metro-london: {web: connected}"
        ),
    )
    assert result.model is not None
    (policy,) = result.model.initial_policies
    assert [(t.cluster, t.state) for t in policy.states] == [
        ("edge-bristol", EndpointState.PLACED),
        ("edge-bath", EndpointState.BOOTED),
        ("metro-london", EndpointState.CONNECTED),
    ]


@pytest.mark.parametrize(
    "state",
    [
        "unplaced",
        "running",
        "Connected",
        pytest.param(
            "1",
        ),
    ],
)
def test_bad_initial_states(tmp_path, state):
    text = sf_service(clusters=f"edge-bristol: {{web: »{state}}}")
    expect(check(tmp_path, text), text, "E801")


def test_clusters_checked_against_the_topology(tmp_path):
    text = sf_service(clusters="»edge-bristle: {web: connected}")
    path = write(tmp_path, text)
    assert_clean(validate([path]))  # without a topology any cluster name goes
    result = validate([path], topology=load_topology(SANDPIT))
    expect(result, text, "E804")
    assert result.diagnostics[0].hint == "did you mean 'edge-bristol'?"


@pytest.mark.parametrize(
    "area",
    [
        "{location: bristol-harbour}",
        "{centre: {latitude: 51.45, longitude: -2.6}, radius_km: 10}",
        "{polygon: [{latitude: 51.5, longitude: -2.7}, {latitude: 51.5, longitude: -2.5},"
        " {latitude: 51.4, longitude: -2.6}]}",
    ],
)
def test_area_containing_the_clusters(tmp_path, area):
    text = sf_service(clusters="edge-bristol: {web: connected}").replace(
        "          clusters:\n", f"          area: {area}\n          clusters:\n"
    )
    result = check(tmp_path, text, topology=load_topology(SANDPIT))
    assert_clean(result)
    assert result.model is not None
    assert result.model.initial_policies[0].area is not None


def test_two_document_form_resolves_clmc_references(tmp_path):
    resources = write(
        tmp_path,
        sf_service(
            clusters="edge-bristol: {web: connected}\nedge-bath: {web: booted}",
            more="""\
            - scale_out:
                type: eu.ict-flame.policies.StateChange
                targets: [web]
                triggers:
                  connect_bath:
                    condition: {constraint: "clmc::high_latency", period: 30 s}
                    action:
                      states:
                        edge-bath: {web: connected}
            """,
        ),
        "resources.yaml",
    )
    alerts = write(
        tmp_path,
        HEAD
        + "metadata: {servicefunctionchain: demo}\n"
        + "topology_template:\n  policies:\n    - alerts:\n"
        + "        type: eu.ict-flame.policies.Alert\n        triggers:\n"
        + "          high_latency:\n            event_type: threshold\n"
        + "            metric: sr_requests.response_time\n"
        + "            condition: {threshold: 80, granularity: 10, comparison_operator: gt,"
        + " aggregation_method: percentile_95, resource_type: {flame_sfc: demo, sf: web}}\n"
        + "            action: {implementation: [flame_sfemc, 'https://hooks.example.com/a']}\n",
        "alerts.yaml",
    )
    result = validate([resources, alerts], topology=load_topology(SANDPIT))
    assert_clean(result)
    model = result.model
    assert model is not None
    (change,) = model.state_change_policies
    assert (change.alert, change.period_s) == ("high_latency", 30.0)
    (rule,) = model.alert_rules
    assert rule.notify_sfemc
    assert rule.webhooks == ("https://hooks.example.com/a",)
    assert rule.aggregation == "percentile_95"
    assert dict(rule.tags) == {"sfc": "demo", "sf": "web"}
    # alone, the resource specification cannot resolve the reference
    alone = validate([resources])
    assert [d.code for d in alone.errors] == ["E806"]


def test_unused_alert_warning_keeps_the_template_valid(tmp_path):
    result = check(
        tmp_path,
        text := sf_service(
            more="""\
            - alerts:
                type: eu.ict-flame.policies.Alert
                triggers:
                  »slow:
                    event_type: threshold
                    metric: sr_requests.response_time
                    condition: {threshold: 80, granularity: 10, comparison_operator: gt}
                    action: {implementation: flame_sfemc}
            """
        ),
    )
    expect(result, text, "W900")
    assert result.ok
    assert result.model is not None


def test_deadman_alert_needs_no_comparison(tmp_path):
    result = check(
        tmp_path,
        sf_service(
            more="""\
            - alerts:
                type: eu.ict-flame.policies.Alert
                triggers:
                  gone:
                    event_type: deadman
                    metric: sr_requests.requests
                    condition: {threshold: 0, granularity: 1 m}
                    action: {implementation: "https://hooks.example.com/gone"}
            """
        ),
    )
    assert_clean(result)
    assert result.model is not None
    assert result.model.alert_rules[0].granularity_s == 60.0


def test_never_deployed_sf_warning(tmp_path):
    text = sf_service().replace(
        "  policies:",
        "    »api:\n      type: eu.ict-flame.nodes.ServiceFunction\n"
        "      properties: {image: api:1.0, fqdn: api.demo.flame}\n  policies:",
    )
    result = check(tmp_path, text)
    expect(result, text, "W902")
    assert result.model is not None


def test_abstract_requirement_warning(tmp_path):
    text = hosted_text(
        """\
        app:
          type: tosca.nodes.SoftwareComponent
          requirements:
            - »host: {capability: tosca.capabilities.Compute}
        """,
    )
    result = check(tmp_path, text)
    expect(result, text, "W903")
    assert result.ok


def test_no_initial_policy(tmp_path):
    text = sf_service().split("  policies:")[0].replace("    web:", "    »web:")
    expect(check(tmp_path, text), text, "E818")


def test_state_change_into_unplaced_is_allowed(tmp_path):
    result = check(
        tmp_path,
        sf_service(
            more="""\
            - release:
                type: eu.ict-flame.policies.StateChange
                targets: [web]
                triggers:
                  idle:
                    event_type: threshold
                    metric: sr_requests.requests
                    condition: {threshold: 1, granularity: 60, comparison_operator: lt}
                    action:
                      implementation: flame_sfemc
                      states: {edge-bristol: {web: unplaced}}
            """
        ),
    )
    assert_clean(result)
    assert result.model is not None
    (change,) = result.model.state_change_policies
    assert change.changes[0].state is EndpointState.UNPLACED


# -- the built-in definitions --------------------------------------------------------------------


def test_builtin_registry_is_shared_and_not_polluted(tmp_path):
    check(tmp_path, HEAD + "node_types:\n  demo.nodes.Mine: {derived_from: tosca.nodes.Root}\n")
    assert base_registry().find("node_types", "demo.nodes.Mine") is None
