"""The data plane's shape, checked: no forgotten tasks, no sockets in decisions, its API.

- every background task starts through `_tasks.TaskSet.spawn` (named, referenced, logged);
- the decision modules (choice, ejection, coalescing, heads, tables, metrics) import neither
  asyncio transports nor httptools: they are tested without sockets;
- the data plane never imports the control plane (also an import-linter contract);
- every module says what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import flame.sfr.router as router_package

PACKAGE = Path(router_package.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
PURE = ["balancer", "coalesce", "headers", "metrics", "outlier", "request", "response", "table"]


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_tasks_start_only_through_the_task_set() -> None:
    offenders = []
    for path in MODULES:
        if path.name == "_tasks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("create_task", "ensure_future"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_decisions_need_no_sockets() -> None:
    for name in PURE:
        found = imports(PACKAGE / f"{name}.py")
        assert not found & {"asyncio", "httptools", "socket", "uvloop", "httpx"}, name


def test_no_control_plane_imports() -> None:
    forbidden = (
        "flame.sfr.pce",
        "flame.sfr.registry",
        "flame.sfr.api",
        "flame.sfr.graph",
        "fastapi",
    )
    for path in MODULES:
        assert not [m for m in imports(path) if m.startswith(forbidden)], path.name


def test_every_module_has_a_docstring() -> None:
    for path in MODULES:
        assert ast.get_docstring(ast.parse(path.read_text())), path.name


def test_public_api() -> None:
    assert sorted(router_package.__all__) == [
        "Limits",
        "NoEndpoint",
        "RouteError",
        "Router",
        "RouterConfig",
        "RouterError",
        "StaticTableSource",
        "TableSource",
        "TableSubscriber",
        "Timeouts",
        "UnknownFqdn",
        "UpstreamError",
        "serve",
    ]
    for name in router_package.__all__:
        assert getattr(router_package, name) is not None
