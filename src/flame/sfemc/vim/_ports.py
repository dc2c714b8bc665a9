"""Host ports for process SFEs, allocated from each cluster's range and persisted (ORCH-6).

The allocation file survives a controller crash, so a restarted controller never hands a port
that a still-running SFE holds to another one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from flame.common.atomicfile import atomic_write_private


class PortsExhausted(Exception):
    def __init__(self, cluster: str, wanted: int, ours: int, others: int, span: range) -> None:
        super().__init__(
            f"cluster {cluster!r} has no free host ports: {wanted} wanted, 0 free in "
            f"{span.start}-{span.stop - 1} ({ours} held by FLAME endpoints, {others} in use by "
            "other programs); remove endpoints or give the cluster a larger port range"
        )


class PortAllocator:
    """``{cluster: {port: "sfe/name"}}`` in one JSON file, changed under an exclusive lock."""

    def __init__(
        self,
        path: Path,
        ranges: Mapping[str, range],
        host: str,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        """`host`: where SFEs listen; `hosts`: another address for some clusters."""
        self.path = path
        self.ranges = dict(ranges)
        self.host = host
        self.hosts = dict(hosts or {})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                table: dict[str, dict[str, str]] = (
                    json.loads(self.path.read_text()) if self.path.exists() else {}
                )
                before = json.dumps(table, sort_keys=True)
                yield table
                if json.dumps(table, sort_keys=True) != before:
                    atomic_write_private(self.path, json.dumps(table, sort_keys=True).encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def allocate(
        self, cluster: str, sfe: str, names: Sequence[str], live: set[str]
    ) -> dict[str, int]:
        """Ports for `names`, reusing what `sfe` already holds (a repeated place is a no-op).

        Allocations of SFEs not in `live` (removed while the controller was down) are reclaimed.
        """
        span = self.ranges[cluster]
        with self._locked() as table:
            held = table.setdefault(cluster, {})
            for port, owner in list(held.items()):
                if owner.split("/", 1)[0] not in live | {sfe}:
                    del held[port]
            mine = {
                owner.split("/", 1)[1]: int(p)
                for p, owner in held.items()
                if owner.startswith(f"{sfe}/")
            }
            wanted = [n for n in names if n not in mine]
            used = {int(p) for p in held}
            host = self.hosts.get(cluster, self.host)
            free = (p for p in span if p not in used and _bindable(host, p))
            for name in wanted:
                got = next(free, None)
                if got is None:
                    ours = len(used & set(span))
                    raise PortsExhausted(cluster, len(wanted), ours, len(span) - ours, span)
                held[str(got)] = f"{sfe}/{name}"
                mine[name] = got
            return {n: mine[n] for n in names}

    def release(self, sfe: str) -> None:
        with self._locked() as table:
            for held in table.values():
                for port, owner in list(held.items()):
                    if owner.startswith(f"{sfe}/"):
                        del held[port]

    def held(self) -> dict[str, dict[int, str]]:
        with self._locked() as table:
            return {c: {int(p): o for p, o in h.items()} for c, h in table.items()}


def _bindable(host: str, port: int) -> bool:
    # Something outside FLAME may already listen there; skip such ports rather than fail later.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
