"""YAML loading that remembers where every value came from.

libyaml (through PyYAML's C composer) builds the node graph; we turn it into plain dicts, lists and
scalars, where each mapping and sequence also records the position of its keys and items. Scalars
stay plain Python values so the rest of the code reads naturally; their positions are asked of the
container that holds them. Duplicate keys, which PyYAML silently overwrites, are reported.
"""

from __future__ import annotations

from typing import Any

import yaml

from flame.common.diagnostics import DiagnosticSink, Position

try:  # pragma: no cover - the manylinux wheels ship libyaml; fall back if a build lacks it
    _Base: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Base = yaml.SafeLoader

_RESOLVED: dict[str, str] = {}  # plain scalar text -> implicit tag; templates repeat their words


class _Loader(_Base):  # type: ignore[misc]
    """libyaml's loader with a memo for implicit tag resolution, its slowest Python step."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_RESOLVED) < 65536:
                    _RESOLVED[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


_STR_TAG = "tag:yaml.org,2002:str"

E_YAML_SYNTAX = "E100"
E_DUPLICATE_KEY = "E101"
E_YAML_KEY = "E108"


class YMap(dict[str, Any]):
    """A YAML mapping with the source positions of itself, its keys and its values."""

    __slots__ = ("key_pos", "pos", "value_pos")

    def __init__(self, pos: Position) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[str, Position] = {}
        self.value_pos: dict[str, Position] = {}

    def at(self, key: str) -> Position:
        """Position of the value under `key` (of the map itself when the key is absent)."""
        return self.value_pos.get(key, self.pos)

    def key_at(self, key: str) -> Position:
        return self.key_pos.get(key, self.pos)


class YSeq(list[Any]):
    """A YAML sequence with the source positions of itself and its items."""

    __slots__ = ("item_pos", "pos")

    def __init__(self, pos: Position) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[Position] = []

    def at(self, index: int) -> Position:
        if 0 <= index < len(self.item_pos):
            return self.item_pos[index]
        return self.pos


def position_of(container: object, key: str | int, default: Position) -> Position:
    """Where `container[key]` came from, falling back to `default` for values we built."""
    if isinstance(container, YMap) and isinstance(key, str):
        return container.at(key)
    if isinstance(container, YSeq) and isinstance(key, int):
        return container.at(key)
    return default


def node_position(value: object, default: Position) -> Position:
    if isinstance(value, YMap | YSeq):
        return value.pos
    return default


class _Builder:
    def __init__(self, filename: str, sink: DiagnosticSink) -> None:
        self.filename = filename
        self.sink = sink
        self.scalars = yaml.constructor.SafeConstructor()
        self.done: dict[int, Any] = {}
        self.building: set[int] = set()  # nodes being built: meeting one again is a cycle

    def pos(self, node: yaml.Node) -> Position:
        mark = node.start_mark
        return Position(self.filename, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node) -> Any:
        # Aliases share the node object; build each node once so anchors cost nothing extra.
        known = self.done.get(id(node))
        if known is not None:
            return known
        if id(node) in self.building:
            # An alias inside its own anchor: a cyclic document that no template needs and that
            # would send every later walk into endless recursion.
            self.sink.error(
                E_YAML_SYNTAX,
                "recursive alias: a value refers to itself through its own anchor",
                self.pos(node),
                hint="copy the value instead of referring to the enclosing anchor",
            )
            return None
        self.building.add(id(node))
        if isinstance(node, yaml.MappingNode):
            result: Any = self._mapping(node)
        elif isinstance(node, yaml.SequenceNode):
            result = YSeq(self.pos(node))
            for item in node.value:
                result.item_pos.append(self.pos(item))
                result.append(self.build(item))
        else:
            result = self._scalar(node)
        self.building.discard(id(node))
        if isinstance(result, YMap | YSeq):
            self.done[id(node)] = result
        return result

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag == _STR_TAG:  # most scalars in templates: skip the generic constructor
            return node.value
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.sink.error(E_YAML_SYNTAX, f"bad scalar: {exc}", self.pos(node), value=node.value)
            return node.value
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp like 2024-13-45
            self.sink.error(
                E_YAML_SYNTAX,
                f"cannot read scalar {node.value!r}: {exc}",
                self.pos(node),
                value=node.value,
                hint="quote the value to keep it a string",
            )
            return node.value

    def _mapping(self, node: yaml.MappingNode) -> YMap:
        result = YMap(self.pos(node))
        merged_keys: set[str] = set()  # keys from '<<' that an explicit key may override
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = self.build(value_node)
                for source in merged if isinstance(merged, list) else [merged]:
                    if not isinstance(source, YMap):
                        self.sink.error(
                            E_YAML_SYNTAX,
                            "'<<' merges mappings, but this is not a mapping",
                            self.pos(value_node),
                            hint="write '<<: *anchor' where the anchor names a mapping",
                        )
                        continue
                    if isinstance(source, YMap):
                        for k, v in source.items():
                            if k not in result:
                                merged_keys.add(k)
                                result[k] = v
                                result.key_pos[k] = source.key_at(k)
                                result.value_pos[k] = source.at(k)
                continue
            key = self.build(key_node)
            key_pos = self.pos(key_node)
            if isinstance(key, YMap | YSeq):
                self.sink.error(
                    E_YAML_KEY,
                    "a mapping key must be a scalar, not a mapping or a list",
                    key_pos,
                    hint="check the indentation or a missing ':'",
                )
                continue
            if not isinstance(key, str):
                key = (
                    "null"
                    if key is None
                    else str(key).lower()
                    if isinstance(key, bool)
                    else str(key)
                )
            if key in result and key not in merged_keys:
                self.sink.error(
                    E_DUPLICATE_KEY,
                    f"duplicate key '{key}' (first defined at line {result.key_pos[key].line})",
                    key_pos,
                    value=key,
                    hint="YAML keeps only one of them; remove or rename the other",
                )
                continue
            merged_keys.discard(key)
            result[key] = self.build(value_node)
            result.key_pos[key] = key_pos
            result.value_pos[key] = self.pos(value_node)
        return result


def load_yaml(text: str, filename: str, sink: DiagnosticSink) -> Any:
    """Parse one YAML document; syntax errors go to `sink` and yield None."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(filename, mark.line + 1, mark.column + 1) if mark else Position(filename)
        problem = exc.problem or "invalid YAML"
        context = f" {exc.context}" if exc.context else ""
        sink.error(
            E_YAML_SYNTAX,
            f"YAML syntax error: {problem}{context}",
            pos,
            hint="check indentation, quoting and ':' after keys",
        )
        return None
    except yaml.YAMLError as exc:
        sink.error(E_YAML_SYNTAX, f"YAML error: {exc}", Position(filename))
        return None
    if node is None:
        return None
    return _Builder(filename, sink).build(node)
