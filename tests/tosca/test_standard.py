"""Valid templates that use only the normative TOSCA 1.3 types, and the normative types themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from flame.common.diagnostics import DiagnosticSink
from flame.tosca import validate
from flame.tosca.definitions import check_definitions
from flame.tosca.loader import Loader
from flame.tosca.types import PRIMITIVES, Registry
from flame.tosca.validator import BUILTIN_FILES, base_registry

STANDARD = Path(__file__).parent / "standard"
FILES = sorted(STANDARD.glob("*.yaml"))
# Warnings a standard template may carry, by file name: code -> why it is expected.
ALLOWED_WARNINGS = {
    "container_application.yaml": {"W903"},  # storage left to an orchestrator's inventory
}


def test_there_are_standard_templates():
    assert len(FILES) >= 7


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_standard_template_is_valid(path: Path):
    result = validate([path])
    assert result.errors == [], "\n".join(map(str, result.errors))
    allowed = ALLOWED_WARNINGS.get(path.name, set())
    unexpected = [d for d in result.warnings if d.code not in allowed]
    assert unexpected == [], "\n".join(map(str, unexpected))
    # normative-only templates describe no FLAME service, so there is no service model
    assert result.model is None


def test_expected_warnings_still_occur():
    for name, codes in ALLOWED_WARNINGS.items():
        result = validate([STANDARD / name])
        assert {d.code for d in result.warnings} == codes


def test_base_registry_builds():
    registry = base_registry()
    assert registry is base_registry()  # parsed once per process
    compute = registry.find("node_types", "tosca.nodes.Compute")
    assert compute is not None
    assert "host" in compute.capabilities
    assert compute.capabilities["host"].type == "tosca.capabilities.Compute"
    assert compute.is_a("tosca.nodes.Root")
    assert registry.find("node_types", "Compute") is compute
    assert registry.find("node_types", "tosca:Compute") is compute
    assert registry.find("node_types", "eu.ict-flame.nodes.ServiceFunction") is not None


def test_builtin_definitions_load_without_diagnostics():
    """The normative types, then the FLAME profile, into a fresh registry: not one diagnostic."""
    sink = DiagnosticSink()
    loader = Loader(sink)
    registry = Registry()
    for name in BUILTIN_FILES:
        doc = loader.parse_builtin(name)
        assert doc is not None, name
        new = registry.add_definitions(doc.root, sink)
        assert new, f"{name} defines no types"
        registry.resolve(new, sink)
        check_definitions(new, registry, sink)
        assert list(sink) == [], f"{name}:\n" + "\n".join(map(str, sink))
    assert registry.find("node_types", "tosca.nodes.Compute") is not None


def test_every_normative_type_resolves_its_parent():
    registry = base_registry()
    for kind, types in registry.types.items():
        for name, tdef in types.items():
            if tdef.parent_name is None or tdef.parent_name in PRIMITIVES:
                continue
            assert tdef.parent is not None, f"{kind} {name}: parent {tdef.parent_name} unresolved"
