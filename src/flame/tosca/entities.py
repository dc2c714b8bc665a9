"""The checked templates of one document, as the FLAME profile and the validator read them."""

from __future__ import annotations

from dataclasses import dataclass, field

from flame.common.diagnostics import Position
from flame.common.yamlsrc import YMap
from flame.tosca.loader import Document
from flame.tosca.schemas import PropertyDef
from flame.tosca.types import TypeDef


@dataclass(slots=True)
class RequirementAssignment:
    name: str
    pos: Position
    target: str | None = None
    target_pos: Position | None = None  # where the target is written; None if matched implicitly


@dataclass(slots=True)
class NodeTemplate:
    name: str
    type: TypeDef
    pos: Position
    raw: YMap
    properties: YMap
    requirements: list[RequirementAssignment] = field(default_factory=list)


@dataclass(slots=True)
class PolicyTemplate:
    name: str
    type: TypeDef | None
    pos: Position
    raw: YMap
    targets: list[tuple[str, Position]]
    properties: YMap
    triggers: YMap | None


@dataclass(slots=True)
class Topology:
    doc: Document
    nodes: dict[str, NodeTemplate] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    policies: list[PolicyTemplate] = field(default_factory=list)
    inputs: dict[str, PropertyDef] = field(default_factory=dict)
    # Node templates declared but unusable (say, of an unknown type): their error is reported
    # once, and references to them stay quiet instead of cascading.
    broken: set[str] = field(default_factory=set)
