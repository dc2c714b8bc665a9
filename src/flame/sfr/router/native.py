"""Which data-plane modules run compiled, and whether a compiled one is older than its source.

The request path (SFR-1) is compiled with mypyc by `make build` (tools/compile_router.py):
the same typed source becomes a C extension whose classes have fixed attribute slots and
call each other directly, which roughly halves the Python time per forwarded request. The
router works interpreted too (a host without a C compiler), only slower; it logs which at
start. A compiled module older than its source would run yesterday's code, so the start-up
log and the test suite both check for that.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMPILED_MODULES", "NativeStatus", "native_status"]

# The modules every forwarded request runs through. Control-plane modules (subscriber,
# reporter, server, router) stay interpreted: they run per table or per batch, not per request.
COMPILED_MODULES = (
    "balancer",
    "body",
    "coalesce",
    "context",
    "cycle",
    "flow",
    "forward",
    "headers",
    "interfaces",
    "metrics",
    "multicast",
    "outlier",
    "pool",
    "protocol",
    "relay",
    "request",
    "response",
    "table",
    "tlsconn",
    "upstream",
    "writer",
)


@dataclass(frozen=True, slots=True)
class NativeStatus:
    compiled: tuple[str, ...]
    interpreted: tuple[str, ...]
    stale: tuple[str, ...]  # compiled from an older version of the source

    def describe(self) -> str:
        if self.stale:
            return (
                f"data plane: {len(self.stale)} compiled module(s) older than their source "
                f"({', '.join(self.stale)}); run `make build` to recompile"
            )
        if not self.interpreted:
            return f"data plane: compiled (mypyc, {len(self.compiled)} modules)"
        if not self.compiled:
            return "data plane: interpreted (run `make build` to compile it with mypyc)"
        return (
            f"data plane: partly compiled; interpreted: {', '.join(self.interpreted)} "
            "(run `make build`)"
        )


def native_status() -> NativeStatus:
    """Find each data-plane module's file without importing it."""
    compiled: list[str] = []
    interpreted: list[str] = []
    stale: list[str] = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or origin.suffix == ".py":
            interpreted.append(name)
            continue
        compiled.append(name)
        source = origin.with_name(f"{name}.py")
        if source.exists() and source.stat().st_mtime > origin.stat().st_mtime:
            stale.append(name)
    return NativeStatus(tuple(compiled), tuple(interpreted), tuple(stale))
