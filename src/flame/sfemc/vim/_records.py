"""The process VIM's records on disk: the spec as JSON in `state.json`, which images placed
SFEs use, the modes of an unpacked image, and the /proc scan for a group's live members."""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec

__all__ = ["has_live_member", "placed_images", "readable_by_all", "spec_from_json", "spec_to_json"]


def placed_images(root: Path) -> dict[str, builtins.list[str]]:
    """digest -> SFEs placed from it under a process VIM root (to refuse deleting it)."""
    used: dict[str, builtins.list[str]] = {}
    for state in sorted(root.glob("sfes/*/state.json")):
        try:
            digest = json.loads(state.read_text())["digest"]
        except (OSError, ValueError, KeyError):
            continue
        used.setdefault(digest, []).append(state.parent.name)
    return used


def readable_by_all(app: Path) -> None:
    """Modes an unprivileged uid can read (the image is mounted read-only, so none writable):
    directories 0755, files 0644 or 0755, whatever umask the controller runs with."""
    app.chmod(0o755)
    for top, dirs, files in os.walk(app):
        for name in dirs + files:
            entry = Path(top, name)
            if entry.is_symlink():
                continue
            executable = entry.is_dir() or entry.stat().st_mode & 0o100
            entry.chmod(0o755 if executable else 0o644)


def has_live_member(pgid: int) -> bool:
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def spec_to_json(spec: EndpointSpec) -> dict[str, Any]:
    doc = dataclasses.asdict(spec)
    doc["environment"] = dict(sorted(spec.environment.items()))
    doc["ports"] = [dataclasses.asdict(p) for p in spec.ports]
    return json.loads(json.dumps(doc))  # type: ignore[no-any-return]  # tuples -> lists


def spec_from_json(doc: Mapping[str, Any]) -> EndpointSpec:
    health = doc.get("health")
    return EndpointSpec(
        **{
            **doc,
            "ports": tuple(PortSpec(**p) for p in doc.get("ports") or ()),
            "environment": dict(doc.get("environment") or {}),
            "health": HealthSpec(**health) if health else None,
        }
    )
