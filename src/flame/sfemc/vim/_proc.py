"""Processes of the process VIM: identity across controller restarts, limits, spawning.

A pid alone does not name a process for long: after the SFE exits the kernel may give the
same pid to something else. A process is named here by (pid, start time in clock ticks since
boot, from /proc/<pid>/stat), which no later process can share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PID_FILE = "pid.json"


@dataclass(frozen=True, slots=True)
class ProcId:
    pid: int
    start: int  # /proc/<pid>/stat field 22

    def alive(self) -> bool:
        """Still this very process, and not a zombie."""
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.start and stat[0] != "Z"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def read_pid_file(directory: Path) -> ProcId | None:
    try:
        doc = json.loads((directory / PID_FILE).read_text())
        return ProcId(int(doc["pid"]), int(doc["start"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def signal_group(proc: ProcId, sig: signal.Signals) -> bool:
    """Signal the SFE's whole process group; never a recycled pid. False if nothing was there."""
    # A dead leader's group members may remain; while they do, the kernel does not reuse the
    # group id, so the group signal reaches only them. A different start time means the pid now
    # names an unrelated process: leave it alone.
    now = start_time(proc.pid)
    if now is not None and now != proc.start:
        return False
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- limits ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: float | None
    memory_bytes: int | None
    disk_bytes: int | None


def find_cgroup2() -> Path | None:
    """A writable cgroup v2 directory where memory and cpu can be delegated, or None.

    Hybrid hosts mount v2 beside v1 with no controllers in it (cgroup.controllers empty):
    limits written there would not be enforced, so that counts as unavailable.
    """
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or parts[2] != "cgroup2":
            continue
        root = Path(parts[1])
        try:
            controllers = set((root / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if {"memory", "cpu"} <= controllers and os.access(root, os.W_OK):
            return root
    return None


class CgroupLimiter:
    """One child cgroup per SFE under ``<root>/flame/<vim>``, where ``<vim>`` names the VIM's
    state directory: two VIMs on one host (two tenants' agents, two test runs) each place an
    SFE of the same name in a group of its own, so neither overwrites the other's limits nor
    merges their accounting. Processes join their group before exec."""

    def __init__(self, root: Path, vim_root: Path) -> None:
        self.base = root / "flame" / vim_scope(vim_root)

    def prepare(self, sfe: str, limits: Limits) -> tuple[Path, str]:
        with contextlib.suppress(OSError):
            (self.base.parent.parent / "cgroup.subtree_control").write_text("+memory +cpu")
        for level in (self.base.parent, self.base):  # each level hands the controllers down
            level.mkdir(exist_ok=True)
            (level / "cgroup.subtree_control").write_text("+memory +cpu")
        group = self.base / sfe
        group.mkdir(exist_ok=True)
        applied = ["cgroup2"]
        if limits.memory_bytes is not None:
            (group / "memory.max").write_text(str(limits.memory_bytes))
            applied.append(f"memory.max={limits.memory_bytes}")
        if limits.cpus is not None:
            period = 100_000
            quota = max(1000, int(limits.cpus * period))
            (group / "cpu.max").write_text(f"{quota} {period}")
            applied.append(f"cpu.max={quota} {period}")
        if limits.disk_bytes is not None:
            applied.append("disk not enforced")
        return group / "cgroup.procs", " ".join(applied)

    def remove(self, sfe: str) -> None:
        with contextlib.suppress(OSError):
            (self.base / sfe).rmdir()


def vim_scope(vim_root: Path) -> str:
    """A VIM's cgroup directory name: stable for its state directory, unique per directory."""
    digest = hashlib.sha256(str(vim_root.resolve()).encode()).hexdigest()[:12]
    return f"vim-{digest}"


def rlimits_for(limits: Limits) -> tuple[list[tuple[int, int]], str]:
    """The prlimit fallback: what can be set and a description of what it covers."""
    applied: list[tuple[int, int]] = []
    words = ["rlimit"]
    if limits.memory_bytes is not None:
        # The data segment (heap and private anonymous mappings), not resident memory: weaker
        # than memory.max, but the kernel enforces it. Not RLIMIT_AS: address space counts
        # every reservation, and a media SF's ffmpeg reserves gigabytes it never touches.
        applied.append((resource.RLIMIT_DATA, limits.memory_bytes))
        words.append(f"RLIMIT_DATA={limits.memory_bytes}")
    if limits.disk_bytes is not None:
        applied.append((resource.RLIMIT_FSIZE, limits.disk_bytes))
        words.append(f"RLIMIT_FSIZE={limits.disk_bytes}")
    if limits.cpus is not None:
        # RLIMIT_CPU caps total CPU seconds, not a share: it would kill a long-lived SF.
        words.append("cpu not enforced (needs a cgroup v2 cpu controller)")
    if len(words) == 1:
        return [], "none requested"
    return applied, " ".join(words)


# -- spawning ------------------------------------------------------------------------------


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    pid_dir: Path,
    rlimits: Sequence[tuple[int, int]],
    cgroup_procs: Path | None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so its group can be signalled as one).

    The child records its own pid and start time before exec: a controller killed right
    after fork still finds the process on restart instead of leaving an orphan.
    """
    pid_path = pid_dir / PID_FILE
    tmp_path = pid_dir / f".{PID_FILE}.tmp"

    def before_exec() -> None:  # runs in the child, between fork and exec
        pid = os.getpid()
        if cgroup_procs is not None:
            cgroup_procs.write_text(str(pid))
        for kind, value in rlimits:
            resource.setrlimit(kind, (value, value))
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat[stat.rindex(")") + 2 :].split()[19]
        tmp_path.write_text(json.dumps({"pid": pid, "start": int(start)}))
        os.replace(tmp_path, pid_path)

    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=before_exec,  # noqa: PLW1509 - limits and the pid file must precede exec
        )


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log without reading all of it."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
                block *= 2
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:]
