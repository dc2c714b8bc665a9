"""One atomic write (issue 18 item 4): whole or nothing, synced with its directory, private
where asked; readers racing writers never see a torn file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from flame.common import atomicfile
from flame.common.atomicfile import atomic_write, atomic_write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaces_content_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    assert _mode(path) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_private_files_and_their_new_parents_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "secrets" / "key.pem"
        atomic_write_private(path, b"k")
    finally:
        os.umask(old)
    assert (_mode(path), _mode(path.parent)) == (0o600, 0o700)


def test_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.conf"
    real.write_text("old")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink()
    assert real.read_text() == "new"


def test_a_failed_replace_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"data")  # a directory cannot be replaced by a file
    assert (target / "inside").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_durable_writes_sync_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:  # records, then really syncs
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomicfile.os, "fsync", spy)
    atomic_write(tmp_path / "a", b"1")
    assert synced == ["file", "dir"]
    synced.clear()
    atomic_write(tmp_path / "b", b"2", durable=False)
    assert synced == []


def test_racing_writers_and_readers_see_only_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    payloads = [bytes([65 + i]) * (64 * 1024) for i in range(6)]
    atomic_write(path, payloads[0])
    stop = threading.Event()
    torn: list[int] = []

    def read() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            if data not in payloads:
                torn.append(len(data))

    def write(payload: bytes) -> None:
        for _ in range(40):
            atomic_write(path, payload, durable=False)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert torn == []
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]
