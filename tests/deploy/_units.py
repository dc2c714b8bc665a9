"""Reading systemd unit files as systemd does, for the parts the tests need: sections with
repeated keys, backslash continuations, specifiers (%i %d %S %H %%), and the expansion of
`${VAR}` (one word) and a lone `$VAR` (split on whitespace) in command lines."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

Unit = dict[str, list[tuple[str, str]]]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LONE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


def parse_unit(path: Path) -> Unit:
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        assert current is not None, f"{path}: a key before any [section]: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not VAR=value: {line!r}"
        env[key.strip()] = value.strip()
    return env


def specifiers(text: str, spec: Mapping[str, str]) -> str:
    """Replace %x specifiers (KeyError for one the test did not provide)."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else spec[m.group(1)], text)


def unit_environment(unit: Unit, spec: Mapping[str, str]) -> dict[str, str]:
    """The unit's own Environment= assignments (specifiers expanded)."""
    env: dict[str, str] = {}
    for assignment in values(unit, "Service", "Environment"):
        for word in shlex.split(specifiers(assignment, spec)):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def command(line: str, env: Mapping[str, str], spec: Mapping[str, str]) -> list[str]:
    """An Exec*= line as the argv systemd would run (undefined variables are empty)."""
    argv: list[str] = []
    for word in shlex.split(specifiers(line, spec)):
        lone = _LONE.match(word)
        if lone is not None:
            argv += env.get(lone.group(1), "").split()
            continue
        argv.append(_VAR.sub(lambda m: env.get(m.group(1), ""), word))
    return argv


def variables(line: str) -> set[str]:
    """The environment variables an Exec*= line uses."""
    names = set(_VAR.findall(line))
    names.update(m.group(1) for w in line.split() if (m := _LONE.match(w)) is not None)
    return names
