"""Static files for the origin: safe path mapping, media types, validators, a small RAM cache.

A request path maps to a file only below its mount's directory: ``..`` segments, NUL bytes and
backslashes are refused before touching the filesystem, and the resolved path (symlinks
followed) must still lie below the directory. Files are read whole (HLS objects are small)
and kept in an LRU bounded in bytes, revalidated by `stat` on every request, so a changed file
is never served stale and the common case costs one `stat` and no read.
"""

from __future__ import annotations

import mimetypes
import os
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

__all__ = [
    "FileCache",
    "PathRefused",
    "Resolver",
    "StaticFile",
    "cache_control",
    "media_type",
    "resolve",
]

_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/mp4",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".json": "application/json",
    ".vtt": "text/vtt",
}
_SEGMENTS = frozenset({".ts", ".m4s", ".mp4", ".m4a", ".aac"})


def media_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return _TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def cache_control(path: str) -> str:
    """Playlists briefly (a live one changes), segments for a year (their names never repeat)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".m3u8":
        return "public, max-age=2"
    if ext in _SEGMENTS:
        return "public, max-age=31536000, immutable"
    return "public, max-age=60"


class PathRefused(ValueError):
    """A path that tries to leave its directory."""


class Resolver:
    """`resolve` for one directory, remembering answers: realpath costs a system call per path
    component, more than the rest of a request. An answer is only a path: `FileCache.get`
    still stats it on every request, and a vanished file is forgotten. (A symlink swapped in
    *later* by someone who can write the directory is not re-checked; that is not a remote
    client's power.)"""

    def __init__(self, base: Path, max_entries: int = 10_000) -> None:
        self.base = base.resolve()
        self.max_entries = max_entries
        self._known: dict[str, Path] = {}

    def __call__(self, relative: str) -> Path | None:
        path = self._known.get(relative)
        if path is not None:
            return path
        path = resolve(self.base, relative)
        if path is not None:
            if len(self._known) >= self.max_entries:
                self._known.clear()
            self._known[relative] = path
        return path

    def forget(self, relative: str) -> None:
        self._known.pop(relative, None)


def resolve(base: Path, relative: str) -> Path | None:
    """The file `relative` names below `base` (already resolved); None when absent;
    `PathRefused` when it would leave `base`."""
    if "\x00" in relative or "\\" in relative:
        raise PathRefused(relative)
    parts = [p for p in relative.split("/") if p]
    if any(p == ".." for p in parts):
        raise PathRefused(relative)
    candidate = base.joinpath(*parts) if parts else base
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(base):
        raise PathRefused(relative)  # a symlink pointing out of the directory
    return real if real.is_file() else None


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    etag: str
    mtime: float
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns): changes when the file does
    headers: tuple[tuple[str, str], ...]  # formatted once per version of the file


class FileCache:
    """Whole files in RAM, least recently used first out, at most `max_bytes` in total."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._files: OrderedDict[Path, StaticFile] = OrderedDict()

    def get(self, path: Path) -> StaticFile:
        """The file's current content (`OSError` if it vanished meanwhile)."""
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._files.get(path)
        if cached is not None and cached.stamp == stamp:
            self._files.move_to_end(path)
            return cached
        with open(path, "rb") as fh:
            body = fh.read()
        etag = f'"{st.st_ino:x}-{len(body):x}-{st.st_mtime_ns:x}"'
        headers = (
            ("Content-Type", media_type(path.name)),
            ("ETag", etag),
            ("Last-Modified", formatdate(st.st_mtime, usegmt=True)),
            ("Cache-Control", cache_control(path.name)),
        )
        entry = StaticFile(body, etag, st.st_mtime, (st.st_ino, len(body), st.st_mtime_ns), headers)
        self._put(path, entry)
        return entry

    def _put(self, path: Path, entry: StaticFile) -> None:
        old = self._files.pop(path, None)
        if old is not None:
            self.bytes -= len(old.body)
        if len(entry.body) > self.max_bytes // 4:
            return  # a big file would flush everything else: serve it uncached
        self._files[path] = entry
        self.bytes += len(entry.body)
        while self.bytes > self.max_bytes:
            _, evicted = self._files.popitem(last=False)
            self.bytes -= len(evicted.body)
