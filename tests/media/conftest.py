"""Fixtures of the media tests: the HLS stream is encoded once per session (real ffmpeg)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flame.media.hls import StreamSpec, ensure_stream
from flame.media.origin import Origin
from sfemc.pg import postgres_server, postgres_url  # the content SF on PostgreSQL

from .helpers import ServerThread, running

__all__ = ["postgres_server", "postgres_url"]


@dataclass(frozen=True)
class Stream:
    root: Path  # the media dir (what --media-dir names)
    path: Path  # the stream's own directory
    seconds: float  # how long the first generation took


@pytest.fixture(scope="session")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    root = tmp_path_factory.mktemp("media")
    started = time.monotonic()
    path = ensure_stream(root, StreamSpec())
    return Stream(root, path, time.monotonic() - started)


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    d = tmp_path / "files"
    d.mkdir()
    (d / "hello.txt").write_bytes(b"hello, flame\n")
    (d / "empty.bin").write_bytes(b"")
    (d / "blob.bin").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    return d


@pytest.fixture
def origin(stream: Stream, files_dir: Path) -> Iterator[ServerThread]:
    with running(lambda: Origin({"/hls": stream.path, "/files": files_dir})) as server:
        yield server


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One keep-alive client (a new httpx client per request costs ~50 ms of TLS set-up)."""
    with httpx.Client(timeout=10, trust_env=False) as client:
        yield client
