"""Which worker has a shared fetch in flight for a key: multicast across worker processes.

Each worker coalesces identical GETs in its own loop (multicast.py). Without more, N workers
would make up to N upstream fetches for one popular object, one per worker its clients landed
on. This table, in memory shared by the workers of one SR (created by `server.serve`), lets
the worker that starts a shared fetch claim its key; another worker that receives the same
request while the claim holds relays it to the owner over a local socket, where it joins the
fetch in flight (relay.py). The claim is dropped when the fetch stops taking joiners.

A relay costs about what a fetch from a fast endpoint costs, so it pays only for objects that
are large or slow to come: when the owner sees a small answer (a known length up to
`RELAY_MIN_BYTES`, or one not to be shared) it marks the key small, and for a second the other
workers fetch it themselves instead of relaying.

A fixed array of slots indexed by a 32-bit hash of the key, guarded by one process-shared
lock (an uncontended futex, well under a microsecond). It only steers requests: a collision,
a stale claim or a race at worst sends a request to a worker that then fetches it itself,
so every outcome stays correct. Claims also expire after the join window, in case a worker
dies holding one.
"""

from __future__ import annotations

import multiprocessing
import time
import zlib
from typing import Any

from flame.sfr.router.coalesce import CoalesceKey

__all__ = ["RELAY_MIN_BYTES", "SLOTS", "InflightTable", "key_hash"]

RELAY_MIN_BYTES = 128 * 1024  # answers up to this size (known in advance) are not relayed

SLOTS = 4096
_FIELDS = 4  # key hash, owner worker + 1, expiry (ms, monotonic), flags
_SMALL = 1  # the object is small: fetching it is cheaper than relaying to a sibling
SMALL_MEMORY = 1.0  # seconds a "small" verdict is remembered


def key_hash(key: CoalesceKey) -> int:
    """A hash of the key that is the same in every process (unlike `hash()`), never 0."""
    fqdn, target, accept, encoding, range_ = key
    data = b"\0".join((fqdn.encode(), target, accept or b"-", encoding or b"-", range_ or b"-"))
    return zlib.crc32(data) or 1


class InflightTable:
    """Shared between the worker processes of one SR; picklable for `spawn`ed workers."""

    def __init__(self, slots: int = SLOTS) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.slots = slots
        self._lock: Any = ctx.Lock()
        self._cells: Any = ctx.RawArray("q", slots * _FIELDS)

    def owner_or_claim(self, h: int, worker: int, ttl: float) -> int | None:
        """The other worker holding a live claim on `h`, or None (then we have claimed it).

        None without a claim too when the slot is held by another key, or when the object
        was found small (not worth a relay): the request is then coalesced in this worker only.
        """
        now = _now_ms()
        i = (h % self.slots) * _FIELDS
        cells = self._cells
        with self._lock:
            held, owner, expiry, flags = cells[i], cells[i + 1], cells[i + 2], cells[i + 3]
            if held and expiry > now:
                if held != h or flags & _SMALL:
                    return None
                if owner and owner != worker + 1:
                    return int(owner) - 1
            cells[i] = h
            cells[i + 1] = worker + 1
            cells[i + 2] = now + int(ttl * 1000)
            cells[i + 3] = 0
        return None

    def mark_small(self, h: int, worker: int) -> None:
        """Our fetch of `h` turned out small: siblings fetch it themselves for a while."""
        i = (h % self.slots) * _FIELDS
        cells = self._cells
        with self._lock:
            if cells[i] == h and cells[i + 1] == worker + 1:
                cells[i + 3] |= _SMALL
                cells[i + 2] = _now_ms() + int(SMALL_MEMORY * 1000)

    def release(self, h: int, worker: int) -> None:
        """Drop our claim on `h` (if it is still ours); a "small" verdict stays until it expires."""
        i = (h % self.slots) * _FIELDS
        cells = self._cells
        with self._lock:
            if cells[i] == h and cells[i + 1] == worker + 1:
                if cells[i + 3] & _SMALL:
                    cells[i + 1] = 0
                else:
                    cells[i] = cells[i + 1] = cells[i + 2] = cells[i + 3] = 0


def _now_ms() -> int:
    # CLOCK_MONOTONIC is the same clock in every process of the machine.
    return int(time.monotonic() * 1000)
