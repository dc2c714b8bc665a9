"""TOSCA functions in a topology: get_input, get_property, get_attribute, concat, join, token...

They are checked after every template is read, so that a reference may point forward; the
scope records which entity SELF, SOURCE and TARGET mean where the function was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import did_you_mean
from flame.tosca import codes
from flame.tosca.entities import Topology
from flame.tosca.types import Registry, TypeDef
from flame.tosca.values import function_call


@dataclass(slots=True)
class FunctionScope:
    """Where a function appears: which entity SELF, SOURCE and TARGET mean."""

    node: str | None = None
    relationship: TypeDef | None = None


class FunctionChecker:
    def __init__(self, topology: Topology, registry: Registry, sink: DiagnosticSink) -> None:
        self.topology = topology
        self.registry = registry
        self.sink = sink

    def check(self, name: str, args: Any, pos: Position, ctx: FunctionScope) -> None:
        if name == "get_input":
            self._get_input(args, pos)
        elif name in ("get_property", "get_attribute"):
            self._get_value(name, args, pos, ctx)
        elif name == "concat":
            if not isinstance(args, list) or not args:
                self._bad_function(name, "a list of values to join", pos, "concat: [a, '-', b]")
                return
            self._nested(args, pos, ctx)
        elif name == "join":
            if (
                not isinstance(args, list)
                or not 1 <= len(args) <= 2
                or not isinstance(args[0], list)
            ):
                self._bad_function(name, "[[values...], delimiter]", pos, "join: [[a, b], ',']")
                return
            self._nested(args[0], pos, ctx)
        elif name == "token":
            if not isinstance(args, list) or len(args) != 3 or not isinstance(args[2], int):
                self._bad_function(
                    name, "[string, separator characters, index]", pos, "token: [s, ':', 1]"
                )
                return
            self._nested(args[:1], pos, ctx)
        elif name == "get_operation_output" and (not isinstance(args, list) or len(args) != 4):
            self._bad_function(name, "[entity, interface, operation, output]", pos, None)
        elif name == "get_nodes_of_type" and not isinstance(args, str):
            self._bad_function(name, "a node type name", pos, None)
        elif name == "get_nodes_of_type":
            self.registry.lookup("node_types", args, pos, self.sink, "get_nodes_of_type")
        elif name == "get_artifact" and (not isinstance(args, list) or not 2 <= len(args) <= 4):
            self._bad_function(name, "[entity, artifact, location?, remove?]", pos, None)

    def _nested(self, args: list[Any], pos: Position, ctx: FunctionScope) -> None:
        for item in args:
            call = function_call(item)
            if call is not None:
                self.check(call[0], call[1], pos, ctx)

    def _bad_function(self, name: str, expected: str, pos: Position, example: str | None) -> None:
        self.sink.error(
            codes.BAD_FUNCTION,
            f"{name} expects {expected}",
            pos,
            hint=f"for example {{ {example} }}" if example else None,
        )

    def _get_input(self, args: Any, pos: Position) -> None:
        name = args[0] if isinstance(args, list) and args else args
        if not isinstance(name, str):
            self._bad_function("get_input", "the name of an input", pos, "get_input: port")
            return
        if name not in self.topology.inputs:
            self.sink.error(
                codes.UNKNOWN_INPUT,
                f"get_input refers to undefined input '{name}'",
                pos,
                value=name,
                hint=did_you_mean(name, self.topology.inputs)
                or "declare it under topology_template.inputs",
            )

    def _get_value(self, func: str, args: Any, pos: Position, ctx: FunctionScope) -> None:
        if (
            not isinstance(args, list)
            or len(args) < 2
            or not all(isinstance(a, str | int) for a in args)
        ):
            self._bad_function(
                func,
                "[entity, (capability or requirement,) name, ...]",
                pos,
                f"{func}: [SELF, port]",
            )
            return
        entity = args[0]
        code = (
            codes.BAD_PROPERTY_REFERENCE
            if func == "get_property"
            else codes.BAD_ATTRIBUTE_REFERENCE
        )
        node_type: TypeDef | None = None
        if entity in ("SOURCE", "TARGET"):
            if ctx.relationship is None and ctx.node is None:
                self.sink.error(
                    code,
                    f"{func}: {entity} is only meaningful inside a relationship",
                    pos,
                    value=entity,
                )
            return  # the endpoints of a relationship are known only at deployment
        if entity in ("SELF", "HOST"):
            if ctx.relationship is not None:
                node_type = None
                props = {**ctx.relationship.properties, **ctx.relationship.attributes}
                if args[1] not in props and func == "get_property":
                    self.sink.error(
                        code,
                        f"{func}: relationship {ctx.relationship.name} has no property '{args[1]}'",
                        pos,
                        value=args[1],
                        hint=did_you_mean(args[1], props),
                    )
                return
            if ctx.node is None:
                self.sink.error(
                    code,
                    f"{func}: {entity} has no meaning here (not inside a node template)",
                    pos,
                    value=entity,
                    hint="name the node template instead",
                )
                return
            if entity == "HOST":
                return  # resolved along HostedOn at deployment
            node_type = self.topology.nodes[ctx.node].type
            node_name = ctx.node
        elif entity in self.topology.broken:
            return
        else:
            target = self.topology.nodes.get(str(entity))
            if target is None:
                self.sink.error(
                    code,
                    f"{func}: no node template named '{entity}'",
                    pos,
                    value=entity,
                    hint=did_you_mean(str(entity), self.topology.nodes)
                    or "use SELF or a node template name",
                )
                return
            node_type = target.type
            node_name = target.name
        self._member(func, code, node_name, node_type, [str(a) for a in args[1:]], pos)

    def _member(
        self,
        func: str,
        code: str,
        node_name: str,
        node_type: TypeDef,
        path: list[str],
        pos: Position,
    ) -> None:
        names: dict[str, Any] = dict(node_type.properties)
        if func == "get_attribute":
            names.update(node_type.attributes)
        first = path[0]
        if first in names:
            return
        cap = node_type.capabilities.get(first)
        if cap is not None and len(path) >= 2:
            ctype = self.registry.find("capability_types", cap.type)
            if ctype is None:
                return
            cap_names: dict[str, Any] = {**ctype.properties, **cap.properties}
            if func == "get_attribute":
                cap_names.update(ctype.attributes)
            if path[1] not in cap_names:
                self.sink.error(
                    code,
                    f"{func}: capability '{first}' of '{node_name}' has no {func[4:]} '{path[1]}'",
                    pos,
                    value=path[1],
                    hint=did_you_mean(path[1], cap_names),
                )
            return
        if first in node_type.requirements and len(path) >= 2:
            return  # resolved against the requirement's target at deployment
        self.sink.error(
            code,
            f"{func}: '{node_name}' ({node_type.name}) has no {func[4:]}, capability or requirement '{first}'",
            pos,
            value=first,
            hint=did_you_mean(first, [*names, *node_type.capabilities, *node_type.requirements]),
        )
