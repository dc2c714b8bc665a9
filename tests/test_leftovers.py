"""The end-of-run sweep (tests/leftovers.py): it finds a run's processes by token or by
directory, leaves other processes alone, and stops what is left after the grace."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import leftovers


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:  # whatever the test did, nothing outlives it
        proc.kill()
        proc.wait(10)


def _sleep(
    started: list[subprocess.Popen[bytes]], *, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "300"], cwd=cwd, env=env)
    started.append(proc)
    return proc


def test_the_sweep_stops_the_run_s_processes_and_only_those(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    basetemp, elsewhere = tmp_path / "basetemp", tmp_path / "basetemp2"  # a prefix, not under
    (basetemp / "test_x0").mkdir(parents=True)
    elsewhere.mkdir()
    token = leftovers.new_token()
    bare = {"PATH": os.environ["PATH"]}
    by_token = _sleep(sleepers, cwd=elsewhere, env={**bare, leftovers.RUN_VARIABLE: token})
    by_cwd = _sleep(sleepers, cwd=basetemp / "test_x0", env=bare)
    other_run = _sleep(sleepers, cwd=elsewhere, env={**bare, leftovers.RUN_VARIABLE: "other"})

    found = leftovers.find(token, basetemp, exclude=set())
    assert set(found) == {by_token.pid, by_cwd.pid}
    assert found[by_cwd.pid] == "sleep 300"

    monkeypatch.setattr(leftovers, "GRACE_S", 0.2)
    left = leftovers.sweep(token, basetemp)
    assert set(left) == {by_token.pid, by_cwd.pid}  # reported as left behind
    assert by_token.wait(10) == by_cwd.wait(10) == -signal.SIGTERM  # and stopped
    assert other_run.poll() is None  # another run's process is not touched
    assert leftovers.sweep(token, basetemp) == {}  # nothing left: no grace waited
