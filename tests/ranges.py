"""Port and uid ranges for the SFEs a test starts, disjoint from every other test process's.

The one place tests get them from (tests/sfemc, tests/orchestrator, tests/media): a port base or
uid derived from the pid lay in free_port's range, and two workers' pids could give the same one.

Ports: `flame.common.ports.free_port` picks from 10000 up to the kernel's ephemeral range (in
this xdist worker's `FLAME_PORT_RANGE` slice, tests/conftest.py), and the kernel hands out ports
of the ephemeral range to outgoing connections and bind(0). Neither picks above the ephemeral
range nor from 1024 to 10000, so SFE ports come from there, each xdist worker its own share of
each region. An SFE then never takes a port that a test picked with free_port but has not bound
yet (that server's listen() would fail), and two workers' SFEs never meet.

A process gets blocks of `SFE_PORTS` ports numbered from 0: block 0 for the one VIM (or
`--port-base`) of a test; block 1 when a test needs a second base at the same time (say an
orchestrator served in-process plus an agent with its own base). Blocks come first from the
worker's share above the ephemeral range (4535 ports above Linux's default, so one block per
worker of three), then from its share of 1024-10000 (two blocks per worker of three, where the
VIM's allocator skips a port some local server holds), and last (a kernel setting that leaves
neither) from the top of the worker's free_port slice, where free_port could still pick one.

Uids: each worker gets `UID_BLOCKS` blocks of `UID_BLOCK` uids, numbered by worker index first so
that two workers of one run never share one (a tenant's sandbox in one test could otherwise
signal or read another test's). Block 0: tests/sfemc/vim/test_sandbox.py; 1:
tests/media/test_content_image.py; 2: tests/media/transcode/test_image.py; 3: free. All lie
above the process VIM's default sandbox uids (200000-265535).

Separate pytest runs on one machine (engineers sharing it) are spread by pid where there is
room; the VIM's port allocator also skips ports something else holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from flame.common import ports

__all__ = [
    "SFE_PORTS",
    "UID_BLOCK",
    "UID_BLOCKS",
    "sandbox_uid_base",
    "sfe_port_base",
    "worker_slot",
]

# Enough for two process clusters of flame.sfemc.runtime.PORTS_PER_CLUSTER (500) each: an agent
# or `flame serve vim` takes that many per process cluster of its topology.
SFE_PORTS = 1000
_PORT_CEILING = 65535  # port_ranges() wants base + span <= 65535
_PORT_FLOOR = 1024  # port_ranges() wants base >= 1024
_FREE_PORT_LOWEST = 10_000  # where free_port starts (flame.common.ports, tests/conftest.py)
UID_BLOCK = 64  # most uids one block holds
UID_BLOCKS = 4  # blocks per worker (see above)
_UID_BASE = 400_000
_UID_SPREAD = 500  # per worker: spreads separate runs by pid


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


def _free_port_slice() -> tuple[int, int]:
    """This worker's free_port range (all of it outside xdist), top excluded."""
    low, _, high = os.environ.get(ports.RANGE_VARIABLE, "").partition("-")
    if low and high:
        return int(low), int(high)
    return _FREE_PORT_LOWEST, ports.ephemeral_start()


def _shared(low: int, high: int) -> list[int]:
    """This worker's blocks in [low, high): its share of the region, rotated by the pid."""
    index, count = worker_slot()
    width = max(high - low, 0) // count
    slots = width // SFE_PORTS
    start, spread = low + index * width, os.getpid() % max(slots, 1)
    return [start + (spread + k) % slots * SFE_PORTS for k in range(slots)]


def _blocks() -> list[int]:
    above = _shared(_ephemeral_end() + 1, _PORT_CEILING)
    below = _shared(
        _PORT_FLOOR, min(_FREE_PORT_LOWEST, ports.ephemeral_start(), *_free_port_slice())
    )
    low, top = _free_port_slice()
    last = range(top - SFE_PORTS, max(low, _PORT_FLOOR) - 1, -SFE_PORTS)
    return [*above, *below, *last]


def sfe_port_base(block: int = 0) -> int:
    """The first of `SFE_PORTS` consecutive ports of this process's `block`-th SFE block (the
    same on every call: a worker runs one test at a time, and each test stops its SFEs).
    Blocks 0 and 1 exist on every usual kernel setting with up to four workers."""
    blocks = _blocks()
    if not 0 <= block < len(blocks):
        raise LookupError(f"no SFE port block {block}: this worker has {len(blocks)}")
    return blocks[block]


def sandbox_uid_base(size: int = UID_BLOCK, block: int = 0) -> int:
    """The first of `size` uids of this process's `block`-th uid block (the same on every call).
    Callers keep to the block the module docstring gives them."""
    if not 0 < size <= UID_BLOCK or not 0 <= block < UID_BLOCKS:
        raise LookupError(f"uid block {block} of {size}: want 0-{UID_BLOCKS - 1} of <= {UID_BLOCK}")
    index, count = worker_slot()
    share = index + count * (os.getpid() % _UID_SPREAD)
    return _UID_BASE + (share * UID_BLOCKS + block) * UID_BLOCK
