"""Port and uid ranges for the SFEs a test starts, disjoint from every other test process's.

Ports: `flame.common.ports.free_port` picks below the kernel's ephemeral range (in this xdist
worker's `FLAME_PORT_RANGE` slice, tests/conftest.py), and the kernel hands out ports of the
ephemeral range to outgoing connections and bind(0). The ports above the ephemeral range are
used by neither, so the SFE ports come from there, each xdist worker its own share. An SFE then
never takes a port that a test picked with free_port but has not bound yet (that server's
listen() would fail), and two workers' SFEs never meet. (A pid-derived base such as
`30000 + (pid % 40) * 500` lay in free_port's range, and two workers' pids could give the
same one.)

Uids: the sandbox tests' tenant uids come from a block numbered by worker index first, so two
workers of one run never share one (a tenant's sandbox in one test could otherwise signal or
read another test's), and lie above the media tests' blocks (tests/media: 310000-346000).

Separate pytest runs on one machine (engineers sharing it) are spread by pid where there is
room; the VIM's port allocator also skips ports something else holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from flame.common import ports

__all__ = ["SFE_PORTS", "sandbox_uid_base", "sfe_port_base", "worker_slot"]

# Enough for two process clusters of flame.sfemc.runtime.PORTS_PER_CLUSTER (500) each: an agent
# or `flame serve vim` takes that many per process cluster of its topology.
SFE_PORTS = 1000
_PORT_CEILING = 65535  # port_ranges() wants base + span <= 65535
_UID_BASE = 400_000
_UID_BLOCKS = 500  # per worker: spreads separate runs by pid


def worker_slot() -> tuple[int, int]:
    """(index, count) of this xdist worker; (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    index = int(name.removeprefix("gw")) if name.startswith("gw") else 0
    return index, max(count, index + 1)


def _ephemeral_end() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 60_999  # Linux's default


def sfe_port_base() -> int:
    """The first of `SFE_PORTS` consecutive ports for this process's SFEs (the same on every
    call: a worker runs one test at a time, and each test stops its SFEs)."""
    index, count = worker_slot()
    low = _ephemeral_end() + 1
    width = (_PORT_CEILING - low) // count
    if width >= SFE_PORTS:
        spread = os.getpid() % (width // SFE_PORTS)
        return low + index * width + spread * SFE_PORTS
    # No room above the ephemeral range (an unusual kernel setting, or many workers): the top
    # of this worker's free_port slice, where free_port could still pick one of these ports
    # (rarely; the allocator skips a bound one).
    top = int(os.environ.get(ports.RANGE_VARIABLE, "").partition("-")[2] or ports.ephemeral_start())
    return top - SFE_PORTS


def sandbox_uid_base(size: int = 64) -> int:
    """The first of `size` uids for this process's sandboxed tenants (the same on every call)."""
    index, count = worker_slot()
    return _UID_BASE + (index + count * (os.getpid() % _UID_BLOCKS)) * size
