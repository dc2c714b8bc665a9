"""Shape checks for user-written YAML: is this a mapping, which keys are allowed, did you mean.

The structural codes (E200 unknown key, E201 wrong shape, E202 missing key, E702 duplicate
name) are the same in every file format FLAME reads.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlsrc import YMap, YSeq

UNKNOWN_KEY = "E200"
WRONG_SHAPE = "E201"
MISSING_KEY = "E202"
DUPLICATE_NAME = "E702"


def did_you_mean(word: object, candidates: Iterable[str], *, dotted: bool = True) -> str | None:
    """A hint naming the closest candidate, if any is close.

    `dotted` also compares the last dotted segment (type names); turn it off for file names,
    whose last segment is only the extension.
    """
    if not isinstance(word, str):
        return None
    pool = list(candidates)
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches and dotted:
        # Type names are long and dotted: compare their last segment too (Compute vs Compte).
        tails = {c.rsplit(".", 1)[-1]: c for c in pool}
        tail = word.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.7)
        matches = [tails[close[0]]] if close else []
    return f"did you mean '{matches[0]}'?" if matches else None


def missing_position(parent: YMap, key: str) -> Position:
    """Where to point when something is missing inside `parent[key]`.

    A block mapping starts on the line below its key, at its first (valid) entry: point at the
    key. A flow mapping (`key: {a: 1}`) sits on the key's line: point at its opening brace.
    """
    value_pos, key_pos = parent.at(key), parent.key_at(key)
    return value_pos if value_pos.line == key_pos.line else key_pos


def kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"the string '{value}'"


def as_map(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> YMap | None:
    """`value` if it is a mapping; otherwise report E201. Null means an empty section."""
    if isinstance(value, YMap):
        return value
    if value is None:
        return YMap(pos)
    sink.error(
        WRONG_SHAPE,
        f"{what} must be a mapping, got {kind_of(value)}",
        pos,
        value=value if not isinstance(value, YSeq) else None,
        hint="write 'key: value' pairs indented under it",
    )
    return None


def as_list(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> YSeq | None:
    if isinstance(value, YSeq):
        return value
    if value is None:
        return YSeq(pos)
    sink.error(
        WRONG_SHAPE,
        f"{what} must be a list, got {kind_of(value)}",
        pos,
        hint="write one '- item' per line",
    )
    return None


def check_keys(m: YMap, allowed: Collection[str], what: str, sink: DiagnosticSink) -> None:
    for key in m:
        if key not in allowed:
            sink.error(
                UNKNOWN_KEY,
                f"unknown key '{key}' in {what}",
                m.key_at(key),
                value=key,
                hint=did_you_mean(key, allowed) or f"allowed keys: {', '.join(sorted(allowed))}",
            )


def single_key_items(
    seq: YSeq, what: str, sink: DiagnosticSink
) -> Iterator[tuple[str, Any, Position, Position, YMap]]:
    """Walk a TOSCA list of one-key mappings (`- name: {...}`), reporting malformed entries.

    Yields (name, value, key position, value position, the one-key map).
    """
    for index, item in enumerate(seq):
        pos = seq.at(index)
        if not isinstance(item, YMap) or len(item) != 1:
            sink.error(
                WRONG_SHAPE,
                f"each entry of {what} must be a mapping with exactly one key (its name)",
                pos,
                hint="write '- name: {...}'",
            )
            continue
        name = next(iter(item))
        yield name, item[name], item.key_at(name), item.at(name), item


def entries(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> YMap | None:
    """Sections that TOSCA allows as a map or as a list of one-key maps (policies, requirements).

    Returns a map view; list order is kept. Duplicate names are reported.
    """
    if isinstance(value, YMap) or value is None:
        return as_map(value, pos, what, sink)
    seq = as_list(value, pos, what, sink)
    if seq is None:
        return None
    result = YMap(seq.pos)
    for name, item, key_pos, value_pos, _ in single_key_items(seq, what, sink):
        if name in result:
            sink.error(
                DUPLICATE_NAME,
                f"'{name}' appears twice in {what}",
                key_pos,
                value=name,
                hint="give each entry a unique name",
            )
            continue
        result[name] = item
        result.key_pos[name] = key_pos
        result.value_pos[name] = value_pos
    return result
