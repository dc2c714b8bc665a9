"""Replacing a file atomically: readers see the old or the new content whole, never a torn file.

The content goes to a temporary file beside the target (created 0600 by mkstemp, so secrets are
never readable by others, not even briefly), is flushed to disk, then renamed over the target,
and the directory is synced so the rename itself survives a crash. `durable=False` keeps the
atomic rename but skips both syncs, for rebuildable data written on a hot path (a cache tier
that checks what it reads back).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_private", "fsync_dir"]


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o644,
    dir_mode: int = 0o777,
    durable: bool = True,
) -> None:
    """Replace `path` with `data` (str is written as UTF-8); the result has `mode`.

    Symlinks are written through (the link stays, its target changes). Missing parent
    directories are created with `dir_mode` (less the umask).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target = Path(os.path.realpath(path))
    target.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            if mode != 0o600:
                os.fchmod(tmp.fileno(), mode)
            tmp.write(payload)
            tmp.flush()
            if durable:
                # On disk before the rename, so a crash cannot leave an empty file in place.
                os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """`atomic_write` for secrets and private state: mode 0600, new parents 0700."""
    atomic_write(path, data, mode=0o600, dir_mode=0o700)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a directory's entries (a rename, a new file); best effort where unsupported."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
