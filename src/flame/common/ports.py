"""Free TCP ports for components started later (`flame up --free-ports`, test servers).

A port asked of the kernel with bind(0) comes from the ephemeral range, the same range every
outgoing connection draws its local port from: between choosing it and the server's listen(),
a client connection can take it (seen in CI: an SR's listen() failed). Ports chosen here lie
below that range, so only another server chosen the same way can collide. A process never
hands out the same port twice in a row of `_REMEMBERED` choices: a caller picking several ports
before starting any server (a PCE, an orchestrator, an SR) would otherwise get the same one
back now and then, nothing being bound to it yet.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque
from pathlib import Path

__all__ = ["free_port", "free_port_on_all"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: well-known and registered ports people run servers on
_REMEMBERED = 4096  # recent choices never repeated by this process
_recent: deque[int] = deque(maxlen=_REMEMBERED)
_recent_set: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
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


def free_port_on_all(hosts: list[str], *, attempts: int = 200) -> int:
    """A port nothing is bound to on any of `hosts`, outside the ephemeral range."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:  # an unusual range leaves too little room below: ask the kernel
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            return int(s.getsockname()[1])
    for _ in range(attempts):
        candidate = random.randrange(_LOWEST, top)
        with _lock:
            if candidate in _recent_set:
                continue
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
