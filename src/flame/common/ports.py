"""Free TCP ports for components started later (`flame up --free-ports`, test servers).

A port asked of the kernel with bind(0) comes from the ephemeral range, the same range every
outgoing connection draws its local port from: between choosing it and the server's listen(),
a client connection can take it (seen in CI: an SR's listen() failed). Ports chosen here lie
below that range, so only another server chosen the same way can collide. A process never
hands out the same port twice in a row of `_REMEMBERED` choices: a caller picking several ports
before starting any server (a PCE, an orchestrator, an SR) would otherwise get the same one
back now and then, nothing being bound to it yet.

`FLAME_PORT_RANGE=LOW-HIGH` narrows the choice (HIGH excluded), so that instances run side by
side, each with its own range, never pick the same port (the test suite gives each parallel
worker one).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections import deque
from pathlib import Path

__all__ = ["RANGE_VARIABLE", "ephemeral_start", "free_port", "free_port_on_all"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: well-known and registered ports people run servers on
RANGE_VARIABLE = "FLAME_PORT_RANGE"
_REMEMBERED = 4096  # recent choices never repeated by this process
_recent: deque[int] = deque(maxlen=_REMEMBERED)
_recent_set: set[int] = set()
_lock = threading.Lock()


def ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _configured_range() -> tuple[int, int] | None:
    raw = os.environ.get(RANGE_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        low, high = (int(part) for part in raw.split("-"))
    except ValueError:
        raise ValueError(f"{RANGE_VARIABLE}={raw!r}: want LOW-HIGH, e.g. 20000-24000") from None
    if not 1024 <= low < high <= 65536:
        raise ValueError(f"{RANGE_VARIABLE}={raw!r}: want 1024 <= LOW < HIGH <= 65536")
    return low, high


def free_port_on_all(hosts: list[str], *, attempts: int = 200) -> int:
    """A port nothing is bound to on any of `hosts`, outside the ephemeral range (or in
    `FLAME_PORT_RANGE` when set)."""
    low, top = _configured_range() or (_LOWEST, ephemeral_start())
    if top - low < 1000 and RANGE_VARIABLE not in os.environ:
        # an unusual ephemeral range leaves too little room below: ask the kernel
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            return int(s.getsockname()[1])
    for attempt in range(attempts):
        candidate = random.randrange(low, top)
        with _lock:
            if candidate in _recent_set and attempt < attempts // 2:
                continue  # (a small, nearly used-up range may repeat rather than run dry)
            if all(_bindable(host, candidate) for host in hosts):
                _remember(candidate)
                return candidate
    raise OSError(f"no free port on all of {', '.join(hosts)} after {attempts} attempts")


def _remember(port: int) -> None:
    if len(_recent) == _REMEMBERED:
        _recent_set.discard(_recent[0])
    _recent.append(port)
    _recent_set.add(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to on `host`, outside the ephemeral range."""
    return free_port_on_all([host])
