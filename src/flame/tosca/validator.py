"""The validator's entry points: every error, located, and the service model when there are none.

result = validate(["svc.yaml"])             # never raises for a user's mistakes
model = load_service(["svc.yaml"])          # raises ValidationFailed listing them all
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.diagnostics import (
    Diagnostic,
    DiagnosticSink,
    Position,
    Severity,
    ValidationFailed,
)
from flame.common.yamlshape import did_you_mean
from flame.topology.model import Topology as Infrastructure
from flame.tosca import codes
from flame.tosca.definitions import check_definitions
from flame.tosca.loader import Document, Loader
from flame.tosca.model import ServiceModel
from flame.tosca.profile import DEFAULT_RUNTIMES, ProfileChecker
from flame.tosca.templates import Topology, TopologyChecker
from flame.tosca.types import Registry, TypeDef

BUILTIN_FILES = ("tosca_simple_yaml_1_3.yaml", "flame_profile.yaml")


@dataclass(slots=True)
class ValidationResult:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    model: ServiceModel | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


@functools.cache
def base_registry() -> Registry:
    """The normative TOSCA 1.3 types and the FLAME profile, parsed once per process."""
    sink = DiagnosticSink()
    loader = Loader(sink)
    registry = Registry()
    for name in BUILTIN_FILES:
        doc = loader.parse_builtin(name)
        if doc is None:  # pragma: no cover - package data is tested
            break
        new = registry.add_definitions(doc.root, sink)
        registry.resolve(new, sink)
        check_definitions(new, registry, sink)
    if sink.has_errors():  # pragma: no cover - a packaging defect, not a user's mistake
        raise RuntimeError(
            "built-in TOSCA definitions are invalid:\n" + "\n".join(map(str, sink.errors))
        )
    return registry


def _definition_order(docs: Iterable[Document]) -> list[Document]:
    """Imported documents before their importers, each once."""
    ordered: list[Document] = []
    seen: set[str] = set()

    def visit(doc: Document) -> None:
        if doc.name in seen:
            return
        seen.add(doc.name)
        for imported in doc.imports:
            visit(imported)
        ordered.append(doc)

    for doc in docs:
        visit(doc)
    return ordered


def _check(
    docs: list[Document],
    sink: DiagnosticSink,
    infra: Infrastructure | None,
    runtimes: Collection[str],
    inputs: Mapping[str, Any] | None,
) -> ServiceModel | None:
    registry = base_registry().copy()
    new: list[TypeDef] = []
    for doc in _definition_order(docs):
        new.extend(registry.add_definitions(doc.root, sink))
    registry.resolve(new, sink)
    check_definitions(new, registry, sink)
    topologies: list[Topology] = [TopologyChecker(doc, registry, sink).check() for doc in docs]
    declared = {name for topology in topologies for name in topology.inputs}
    for name in inputs or {}:
        if name not in declared:
            sink.error(
                codes.UNKNOWN_INPUT,
                f"input '{name}' was given a value but no template declares it",
                Position(docs[0].name, 1, 1),
                value=name,
                hint=did_you_mean(name, declared) or "declare it under topology_template.inputs",
            )
    return ProfileChecker(topologies, sink, infra=infra, runtimes=runtimes, inputs=inputs).build()


def validate(
    paths: Iterable[str | Path],
    *,
    topology: Infrastructure | None = None,
    runtimes: Collection[str] = DEFAULT_RUNTIMES,
    inputs: Mapping[str, Any] | None = None,
) -> ValidationResult:
    """Validate one service: a single template, or a resource and an alert specification.

    Files may be YAML or CSAR archives. Returns every diagnostic, sorted by position.
    """
    sink = DiagnosticSink()
    loader = Loader(sink)
    docs = [doc for doc in (loader.load(p) for p in paths) if doc is not None]
    model = _check(docs, sink, topology, runtimes, inputs) if docs else None
    return ValidationResult(sink.sorted(), model if not sink.has_errors() else None)


def validate_texts(
    texts: Mapping[str, str],
    *,
    topology: Infrastructure | None = None,
    runtimes: Collection[str] = DEFAULT_RUNTIMES,
    inputs: Mapping[str, Any] | None = None,
) -> ValidationResult:
    """Validate templates given as text (an HTTP upload): name -> YAML text.

    Only the built-in profile may be imported; anything else needs a CSAR.
    """
    sink = DiagnosticSink()
    loader = Loader(sink)
    docs = [
        doc
        for doc in (loader.load_text(text, name) for name, text in texts.items())
        if doc is not None
    ]
    model = _check(docs, sink, topology, runtimes, inputs) if docs else None
    return ValidationResult(sink.sorted(), model if not sink.has_errors() else None)


def load_service(
    paths: Collection[str | Path],
    *,
    topology: Infrastructure | None = None,
    runtimes: Collection[str] = DEFAULT_RUNTIMES,
    inputs: Mapping[str, Any] | None = None,
) -> ServiceModel:
    """The service model of valid templates; raise ValidationFailed with every error otherwise."""
    result = validate(paths, topology=topology, runtimes=runtimes, inputs=inputs)
    if result.model is None:
        diagnostics = result.diagnostics
        if result.ok:
            first = Position(str(next(iter(paths), "<template>")), 1, 1)
            diagnostics = [
                *diagnostics,
                Diagnostic(
                    codes.MISSING_SFC,
                    "not a FLAME service: no eu.ict-flame.nodes.ServiceFunction and no servicefunctionchain",
                    first,
                    hint="see docs/tosca.md for the FLAME profile",
                ),
            ]
        raise ValidationFailed(diagnostics)
    return result.model
