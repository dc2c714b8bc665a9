"""Fixtures for the VIM driver tests: a repository holding the echo SF, a process VIM whose
SFE processes are all gone when the test ends (the test fails if one was left running)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Unpack

import pytest
import pytest_asyncio

from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim._proc import ProcId, read_pid_file, start_time
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.process import ProcessVim
from ranges import sfe_port_base
from sfemc.helpers import SpecFields

ECHO = Path(__file__).resolve().parents[3] / "examples" / "sf" / "echo"


def port_base() -> int:
    # This process's own SFE ports, apart from free_port's and other workers' (tests/ranges.py).
    return sfe_port_base()


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepository:
    return ImageRepository(tmp_path / "images")


@pytest.fixture
def echo_digest(repo: ImageRepository) -> str:
    return repo.put(build_image(ECHO)[0], tags=["test"]).digest


def make_sf(repo: ImageRepository, tmp_path: Path, name: str, code: str, **manifest: str) -> str:
    """Package a throwaway SF whose server.py is `code`; returns its digest."""
    src = tmp_path / "src" / name
    src.mkdir(parents=True)
    (src / "server.py").write_text(code)
    lines = [f"name: {name}", "entrypoint: [python3, server.py]"]
    lines += [f"{k}: {v}" for k, v in manifest.items()]
    (src / "flame-sf.yaml").write_text("\n".join(lines) + "\n")
    return repo.put(build_image(src)[0]).digest


def spec(
    digest: str, sfe: str = "i1.echo.c1", cluster: str = "c1", **kw: Unpack[SpecFields]
) -> EndpointSpec:
    base = EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="i1",
        sf=sfe.split(".")[1] if sfe.count(".") >= 2 else "echo",
        cluster=cluster,
        fqdn="echo.example",
        image=digest,
    )
    return dataclasses.replace(base, **kw)


class PidWatch:
    """Every SFE process seen under a VIM root; all must be gone at the end of the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: set[ProcId] = set()

    def scan(self) -> set[ProcId]:
        sfes = self.root / "sfes"
        found = (
            {p for d in sfes.iterdir() if (p := read_pid_file(d)) is not None}
            if sfes.exists()
            else set()
        )
        self.seen |= found
        return found

    def leftovers(self) -> list[ProcId]:
        """Live SFE processes: every pid seen, and any process working under the VIM root."""
        self.scan()
        left = {p for p in self.seen if p.alive()}
        root = str(self.root.resolve())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            start = start_time(int(entry.name))
            if cwd.startswith(root + os.sep) and start is not None:
                proc = ProcId(int(entry.name), start)
                if proc.alive():
                    left.add(proc)
        return sorted(left, key=lambda p: p.pid)


@pytest.fixture
def pid_watch(tmp_path: Path) -> Iterator[PidWatch]:
    watch = PidWatch(tmp_path / "vim")
    yield watch
    left = watch.leftovers()
    for proc in left:  # clean up first so one failure does not leak into other tests
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"SFE processes left running: {left}"


@pytest_asyncio.fixture
async def vim(
    tmp_path: Path, repo: ImageRepository, pid_watch: PidWatch
) -> AsyncIterator[ProcessVim]:
    base = port_base()
    driver = ProcessVim(
        tmp_path / "vim",
        {"c1": range(base, base + 40), "c2": range(base + 40, base + 80)},
        repo,
        grace_s=2.0,
        boot_timeout_s=15.0,
        backoff_s=(0.05, 0.5),
    )
    yield driver
    pid_watch.scan()
    for status in await driver.list():
        await driver.remove(status.sfe)
    await driver.close()
    shutil.rmtree(tmp_path / "vim", ignore_errors=True)
