"""The edge cache's object store: a RAM tier and an optional disk tier, each LRU-bounded in bytes.

Objects are whole origin answers (status, the headers worth replaying, body, validators,
expiry). The RAM tier answers hits; with a disk directory, every stored object is also
written there (body + JSON metadata, each by temp file + rename, so a crash never leaves a
torn object), objects evicted from RAM stay on disk and come back on their next hit, and a
restarted cache starts warm. Expiry is wall-clock time so that it survives a restart.
Negative answers (404) live in RAM only: they are short-lived by design.

Objects are indexed across both tiers by their base key (path and query: every variant a
``Vary`` response made, at most `max_variants` per base, the least recently stored going
first) and by tag (``Surrogate-Key``/``Cache-Tag``), so that purges by path, by prefix and by
tag find every copy, in RAM or on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.atomicfile import atomic_write

__all__ = ["CachedObject", "ObjectStore", "variant_key"]

log = logging.getLogger(__name__)

_OVERHEAD = 512  # bytes charged per object for its key, headers and bookkeeping


@dataclass(slots=True)
class CachedObject:
    key: str
    status: int
    headers: list[tuple[str, str]]  # replayed to clients: type, validators, Cache-Control
    body: bytes
    etag: str | None
    last_modified: float | None
    stored_at: float  # time.time()
    expires_at: float  # time.time(); fresh while now < expires_at
    base: str = ""  # path?query; `key` adds the values of the Vary headers ("" = key)
    vary: tuple[str, ...] = ()  # request header names the origin said it varies on
    tags: tuple[str, ...] = ()  # Surrogate-Key / Cache-Tag
    swr: float = 0.0  # stale-while-revalidate window (s after expires_at)
    sie: float = 0.0  # stale-if-error window (s after expires_at)

    def __post_init__(self) -> None:
        if not self.base:
            self.base = self.key

    @property
    def size(self) -> int:
        return len(self.body) + _OVERHEAD

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires_at

    def meta(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "headers": self.headers,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "stored_at": self.stored_at,
            "expires_at": self.expires_at,
            "length": len(self.body),
            "base": self.base,
            "vary": list(self.vary),
            "tags": list(self.tags),
            "swr": self.swr,
            "sie": self.sie,
        }


class _Lru:
    """Sizes by key, least recently used first; `over()` says how far past the bound it is."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.sizes: OrderedDict[str, int] = OrderedDict()

    def touch(self, key: str) -> None:
        self.sizes.move_to_end(key)

    def add(self, key: str, size: int) -> None:
        self.remove(key)
        self.sizes[key] = size
        self.bytes += size

    def remove(self, key: str) -> None:
        size = self.sizes.pop(key, None)
        if size is not None:
            self.bytes -= size

    def victims(self) -> list[str]:
        """Keys to drop, oldest first, to come back under the bound."""
        excess = self.bytes - self.max_bytes
        out: list[str] = []
        for key, size in self.sizes.items():
            if excess <= 0:
                break
            out.append(key)
            excess -= size
        return out


class ObjectStore:
    def __init__(
        self,
        max_bytes: int,
        *,
        disk_dir: Path | None = None,
        disk_max_bytes: int | None = None,
        max_object_bytes: int | None = None,
        max_variants: int = 8,
    ) -> None:
        # By default one object may take a quarter of RAM: a huge file must not flush the rest.
        self.max_object_bytes = max_bytes // 4 if max_object_bytes is None else max_object_bytes
        self.max_variants = max_variants
        self.mem: dict[str, CachedObject] = {}
        self.mem_lru = _Lru(max_bytes)
        self.disk_dir = disk_dir
        self.disk_lru = _Lru(disk_max_bytes if disk_max_bytes is not None else 4 * max_bytes)
        # Indexes over both tiers: base key -> its variant keys (oldest first) and vary names;
        # tag -> keys; key -> (base, tags) to undo both.
        self.bases: dict[str, dict[str, None]] = {}
        self.vary: dict[str, tuple[str, ...]] = {}
        self.tagged: dict[str, set[str]] = {}
        self.indexed: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.evictions = 0
        self.disk_evictions = 0
        self.disk_reads = 0
        if disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self._scan()

    def variant_key(self, base: str, headers: dict[str, str]) -> str:
        """The key of the variant of `base` that a request with `headers` selects."""
        names = self.vary.get(base)
        return variant_key(base, names, headers) if names else base

    def get(self, key: str) -> CachedObject | None:
        obj = self.mem.get(key)
        if obj is not None:
            self.mem_lru.touch(key)
            return obj
        if self.disk_dir is None or key not in self.disk_lru.sizes:
            return None
        obj = self._read(key)
        if obj is None:
            self.disk_lru.remove(key)
            self._forget_if_gone(key)
            return None
        self.disk_reads += 1
        self.disk_lru.touch(key)
        self._remember(obj)
        return obj

    def put(self, obj: CachedObject, *, persist: bool = True) -> bool:
        """Store `obj`; False when it is too big to cache."""
        if obj.size > self.max_object_bytes:
            return False
        if obj.base in self.bases and self.vary.get(obj.base, ()) != obj.vary:
            self.purge(obj.base)  # the origin changed what it varies on: old variants are void
        self._index(obj)
        self._remember(obj)
        if persist and self.disk_dir is not None and obj.size <= self.disk_lru.max_bytes:
            self._write(obj)
            self.disk_lru.add(obj.key, obj.size)
            for victim in self.disk_lru.victims():
                self.disk_lru.remove(victim)
                self._unlink(victim)
                self.disk_evictions += 1
                self._forget_if_gone(victim)
        variants = self.bases.get(obj.base, {})
        while len(variants) > self.max_variants:
            self.delete(next(iter(variants)))
        return True

    def refresh(self, obj: CachedObject) -> None:
        """Persist new expiry/headers of an object already stored (after a 304)."""
        if self.disk_dir is not None and obj.key in self.disk_lru.sizes:
            self._write_meta(obj)

    def delete(self, key: str) -> bool:
        found = False
        if self.mem.pop(key, None) is not None:
            self.mem_lru.remove(key)
            found = True
        if key in self.disk_lru.sizes:
            self.disk_lru.remove(key)
            self._unlink(key)
            found = True
        self._forget_if_gone(key)
        return found

    def purge(self, base: str) -> int:
        """Remove every variant of `base` (a path with its query, if any); returns how many."""
        return sum(self.delete(k) for k in list(self.bases.get(base, ())))

    def purge_prefix(self, prefix: str) -> int:
        return sum(self.purge(b) for b in [b for b in self.bases if b.startswith(prefix)])

    def ban(self, tag: str) -> int:
        """Remove every object the origin tagged `tag`; returns how many."""
        return sum(self.delete(k) for k in list(self.tagged.get(tag, ())))

    def stats(self) -> dict[str, int]:
        return {
            "objects": len(self.mem),
            "bytes": self.mem_lru.bytes,
            "max_bytes": self.mem_lru.max_bytes,
            "disk_objects": len(self.disk_lru.sizes),
            "disk_bytes": self.disk_lru.bytes,
            "disk_reads": self.disk_reads,
            "evictions": self.evictions,
            "disk_evictions": self.disk_evictions,
            "bases": len(self.bases),
            "tags": len(self.tagged),
        }

    # -- indexes ---------------------------------------------------------------------------------

    def _index(self, obj: CachedObject) -> None:
        self._unindex(obj.key)
        self.indexed[obj.key] = (obj.base, obj.tags)
        self.bases.setdefault(obj.base, {})[obj.key] = None
        if obj.vary:
            self.vary[obj.base] = obj.vary
        for tag in obj.tags:
            self.tagged.setdefault(tag, set()).add(obj.key)

    def _unindex(self, key: str) -> None:
        entry = self.indexed.pop(key, None)
        if entry is None:
            return
        base, tags = entry
        variants = self.bases.get(base)
        if variants is not None:
            variants.pop(key, None)
            if not variants:
                del self.bases[base]
                self.vary.pop(base, None)
        for tag in tags:
            keys = self.tagged.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.tagged[tag]

    def _forget_if_gone(self, key: str) -> None:
        if key not in self.mem and key not in self.disk_lru.sizes:
            self._unindex(key)

    # -- RAM -------------------------------------------------------------------------------------

    def _remember(self, obj: CachedObject) -> None:
        self.mem[obj.key] = obj
        self.mem_lru.add(obj.key, obj.size)
        for victim in self.mem_lru.victims():
            self.mem_lru.remove(victim)
            del self.mem[victim]
            self.evictions += 1
            self._forget_if_gone(victim)

    # -- disk ------------------------------------------------------------------------------------

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.disk_dir is not None
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.disk_dir / f"{name}.body", self.disk_dir / f"{name}.json"

    def _write(self, obj: CachedObject) -> None:
        body_path, _ = self._paths(obj.key)
        try:
            _atomic_write(body_path, obj.body)
            self._write_meta(obj)
        except OSError as exc:
            log.warning(
                "cannot write %s to the disk cache (%s); it stays in RAM only", obj.key, exc
            )

    def _write_meta(self, obj: CachedObject) -> None:
        _, meta_path = self._paths(obj.key)
        _atomic_write(meta_path, json.dumps(obj.meta()).encode())

    def _read(self, key: str) -> CachedObject | None:
        body_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_bytes())
            body = body_path.read_bytes()
        except (OSError, ValueError):
            return None
        if len(body) != meta.get("length") or meta.get("key") != key:
            return None  # torn or foreign: treat as absent
        return _from_meta(meta, body)

    def _unlink(self, key: str) -> None:
        for path in self._paths(key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _scan(self) -> None:
        """Index what a previous run left, oldest access first."""
        assert self.disk_dir is not None
        found: list[tuple[float, str, int, CachedObject]] = []
        for meta_path in self.disk_dir.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_bytes())
                stub = _from_meta(meta, b"")  # for the indexes; the body stays on disk
                found.append((meta_path.stat().st_mtime, stub.key, int(meta["length"]), stub))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for _, key, length, stub in sorted(found, key=lambda f: f[:3]):
            self.disk_lru.add(key, length + _OVERHEAD)
            self._index(stub)
        for victim in self.disk_lru.victims():
            self.disk_lru.remove(victim)
            self._unlink(victim)
            self._unindex(victim)


def _from_meta(meta: dict[str, Any], body: bytes) -> CachedObject:
    return CachedObject(
        key=meta["key"],
        status=int(meta["status"]),
        headers=[(str(k), str(v)) for k, v in meta["headers"]],
        body=body,
        etag=meta.get("etag"),
        last_modified=meta.get("last_modified"),
        stored_at=float(meta["stored_at"]),
        expires_at=float(meta["expires_at"]),
        base=str(meta.get("base") or meta["key"]),
        vary=tuple(str(n) for n in meta.get("vary", ())),
        tags=tuple(str(t) for t in meta.get("tags", ())),
        swr=float(meta.get("swr", 0.0)),
        sie=float(meta.get("sie", 0.0)),
    )


def variant_key(base: str, names: tuple[str, ...], headers: dict[str, str]) -> str:
    """`base` plus the request's values of the Vary headers (whitespace normalised)."""
    parts = [f"{n}:{' '.join(headers.get(n, '').split())}" for n in names]
    return "\n".join([base, *parts])


def _atomic_write(path: Path, data: bytes) -> None:
    # No fsync: the tier is rebuildable and `_read` drops an object whose body and metadata
    # disagree, so a power cut costs cache entries, never a wrong answer; syncing every fill
    # would stall the event loop.
    atomic_write(path, data, durable=False)
