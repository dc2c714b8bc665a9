"""The FLAME-in-a-box supervisor with real child processes (issue 14 item 6)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import flame.sandbox.up as up_module
from flame.sandbox.supervisor import (
    Component,
    Supervisor,
    pid_alive,
    process_start,
    read_instance,
    stop_instance,
)

SLEEPER = Component("sleeper", (sys.executable, "-c", "import time; time.sleep(120)"))


ORPHANS: list[subprocess.Popen[bytes]] = []  # reaped at the end, as init would


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    yield
    for process in ORPHANS:
        process.kill()
        process.wait()
    ORPHANS.clear()


def kill_supervisor(supervisor: Supervisor) -> None:
    """What kill -9 of the supervising process leaves: the lock released by the kernel,
    up.json and the children still there."""
    assert supervisor._lock is not None
    supervisor._lock.close()
    supervisor._lock = None
    ORPHANS.extend(r.process for r in supervisor.running)
    supervisor.running.clear()


def test_a_new_flame_up_stops_what_a_killed_supervisor_left_running(tmp_path: Path) -> None:
    first = Supervisor(tmp_path)
    first.acquire()
    child = first.start(SLEEPER).process.pid
    kill_supervisor(first)
    assert pid_alive(child)
    second = Supervisor(tmp_path)
    second.acquire()  # finds the leftovers in up.json and stops them before anything starts
    try:
        assert not pid_alive(child)
        assert read_instance(tmp_path) is None
    finally:
        second.stop_all()
        second.release()


def test_flame_down_stops_a_dead_supervisors_children(tmp_path: Path) -> None:
    first = Supervisor(tmp_path)
    first.acquire()
    children = [first.start(SLEEPER).process.pid for _ in range(2)]
    kill_supervisor(first)
    assert stop_instance(tmp_path)
    assert not any(pid_alive(pid) for pid in children)
    assert not stop_instance(tmp_path)  # nothing left: "not running"


def test_a_recycled_pid_is_never_killed(tmp_path: Path) -> None:
    """up.json names a pid now used by an unrelated process (other start time): spared."""
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        start = process_start(bystander.pid)
        assert start is not None
        (tmp_path / "up.json").write_text(
            f'{{"pid": 1, "components": [{{"name": "pce", "pid": {bystander.pid}, '
            f'"start": {start - 1}}}]}}'
        )
        stop_instance(tmp_path)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_restart_back_off_resets_after_a_stable_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 6 crashes the delay stayed at 30-35 s however long the component had run. The
    delays the watcher waits are recorded, not timed, so a loaded machine cannot change them."""
    monkeypatch.setattr(up_module, "FIRST_RESTART_DELAY_S", 0.05)
    real_sleep = up_module._sleep_unless

    def delays_of(name: str, restarts: int) -> list[float]:
        waited: list[float] = []

        def recording_sleep(seconds: float, stopping: Callable[[], bool]) -> None:
            waited.append(seconds)
            real_sleep(seconds, stopping)

        monkeypatch.setattr(up_module, "_sleep_unless", recording_sleep)
        supervisor = Supervisor(tmp_path / name)
        supervisor.acquire()
        supervisor.start(
            Component("crasher", (sys.executable, "-c", "import time; time.sleep(0.2)"))
        )
        try:
            up_module._watch(supervisor, lambda: len(waited) >= restarts)
        finally:
            supervisor.stop_all()
            supervisor.release()
        return waited

    # Every run lasts at least 0.2 s, stable when STABLE_RUN_S is 0.1: each restart waits 0.05 s.
    monkeypatch.setattr(up_module, "STABLE_RUN_S", 0.1)
    assert delays_of("steady", 4) == [0.05] * 4
    # Never stable: 0.05, 0.1, 0.2, 0.4 s, doubling.
    monkeypatch.setattr(up_module, "STABLE_RUN_S", 1e9)
    assert delays_of("doubling", 4) == [0.05, 0.1, 0.2, 0.4]
