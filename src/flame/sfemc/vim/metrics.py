"""Resource metrics of a process VIM's SFEs and of its host, with Telegraf's names (CLMC-8).

`SfeSampler` reads what the process VIM keeps on disk (``<root>/sfes/<sfe>/state.json`` and
``pid.json``), so it works beside any `ProcessVim` (the orchestrator's own or a cluster
agent's) without reaching into it, and sees SFEs adopted after a restart. Per running SFE:

* the process tree: the tracked process (bwrap when sandboxed) and all its descendants, from
  one scan of /proc per sample. CPU is user and system time of the live tree plus what its
  members reaped (utime+cutime, stime+cstime), so work of short-lived children counts; when the
  SFE runs in its own cgroup v2 group (``<cgroup>/flame/<vim>/<sfe>``), ``cpu.stat`` replaces that
  (it also counts children that were never reaped). Memory is the tree's summed RSS.
* network bytes only when the SFE has a network namespace of its own (a process of its tree in
  a netns other than the sampler's): ``/proc/<pid>/net/dev`` of that process. SFEs sharing the
  host's network namespace (the default sandbox keeps it) get no `net` point: the host's
  counters are not the SFE's.

`HostSampler` reads the host (/proc/stat, /proc/meminfo, /proc/net/dev, /proc/loadavg,
statvfs of the VIM's root) once per sample and emits it once per cluster the VIM serves.

Measurements and fields follow Telegraf's inputs where one exists (docs/clmc-information-model.md):
`procstat` (cpu_time_user, cpu_time_system, cpu_usage, memory_rss, num_threads, pid) plus
FLAME's `restarts`; `procstat_lookup` (pid_count, running, restarts); `cpu` (usage_user,
usage_system, usage_idle, ...); `mem`; `disk`; `net`; `system`. An SFE's `cpu` point has the
tag ``cpu=sfe`` and its usage is a percentage of the cores the SFE may use (its `cpus` limit,
else every core of the host), so 100 means "all it may have"; `procstat.cpu_usage` is, as in
Telegraf, a percentage of one core. Every SFE point carries the tags sfc, sfci, sf, sfe,
cluster, tenant, fqdn and host, so alert rules filter on them (`resource_type`) and tenants
read only their own SFEs' points (`flame.clmc.tenancy`); host points carry host and cluster
only, so only the operator reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flame.common.lineproto import FieldValue, point
from flame.sfemc.vim._proc import ProcId, read_pid_file

__all__ = ["HostSampler", "ProcEntry", "SfeSampler", "proc_table"]

_TICK = float(os.sysconf("SC_CLK_TCK"))
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class ProcEntry:
    pid: int
    ppid: int
    start: int
    user_s: float  # utime + cutime
    system_s: float  # stime + cstime
    rss_bytes: int
    threads: int


def _read_stat(pid: int) -> ProcEntry | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        f = raw[raw.rindex(")") + 2 :].split()
        # fields from 3 on, 0-based here: ppid 1, utime 11, stime 12, cutime 13, cstime 14,
        # num_threads 17, starttime 19, rss 21 (pages)
        return ProcEntry(
            pid=pid,
            ppid=int(f[1]),
            start=int(f[19]),
            user_s=(int(f[11]) + int(f[13])) / _TICK,
            system_s=(int(f[12]) + int(f[14])) / _TICK,
            rss_bytes=int(f[21]) * _PAGE,
            threads=int(f[17]),
        )
    except (ValueError, IndexError):
        return None


def proc_table() -> dict[int, ProcEntry]:
    """Every process of this host's /proc, one read of its stat each."""
    table: dict[int, ProcEntry] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                found = _read_stat(int(entry.name))
                if found is not None:
                    table[found.pid] = found
    return table


def tree(root: int, table: Mapping[int, ProcEntry]) -> list[ProcEntry]:
    """`root` and its descendants in `table`."""
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    out: list[ProcEntry] = []
    todo = [root]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        out.append(table[pid])
        todo.extend(children.get(pid, ()))
    return out


def _cgroup_cpu(group: Path) -> tuple[float, float] | None:
    """(user, system) seconds from a cgroup v2 group's cpu.stat, or None."""
    try:
        text = (group / "cpu.stat").read_text()
    except OSError:
        return None
    values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    try:
        return int(values["user_usec"]) / 1e6, int(values["system_usec"]) / 1e6
    except (KeyError, ValueError):
        return None


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def net_dev(path: Path) -> dict[str, dict[str, int]]:
    """Interface -> Telegraf `net` fields from a /proc/.../net/dev file."""
    out: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        v = rest.split()
        if len(v) < 16:
            continue
        try:
            n = [int(x) for x in v[:16]]
        except ValueError:
            continue
        out[name.strip()] = {
            "bytes_recv": n[0],
            "packets_recv": n[1],
            "err_in": n[2],
            "drop_in": n[3],
            "bytes_sent": n[8],
            "packets_sent": n[9],
            "err_out": n[10],
            "drop_out": n[11],
        }
    return out


@dataclass(slots=True)
class _Last:
    proc: ProcId
    time: float
    user_s: float
    system_s: float


class SfeSampler:
    """Samples the SFEs under a process VIM root (`sfes_dir`); `cgroup_base`: the VIM's
    ``<cgroup2>/flame/<vim>`` directory, when it places SFEs in cgroups."""

    def __init__(
        self,
        sfes_dir: Path,
        *,
        cgroup_base: Path | None = None,
        host: str | None = None,
        cores: int | None = None,
    ) -> None:
        self.sfes_dir = sfes_dir
        self.cgroup_base = cgroup_base
        self.host = host or socket.gethostname()
        self.cores = cores or _cores()
        self._last: dict[str, _Last] = {}
        self._own_netns = _netns(os.getpid())

    def _records(self) -> Iterable[tuple[str, dict[str, object], ProcId | None]]:
        try:
            dirs = sorted(p for p in self.sfes_dir.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        for path in dirs:
            try:
                doc = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
                yield path.name, doc, read_pid_file(path)

    def sample(self, now_ns: int | None = None) -> list[str]:
        """Line-protocol points of every SFE the VIM should run, at `now_ns`."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        now = time.monotonic()
        table: dict[int, ProcEntry] | None = None
        lines: list[str] = []
        seen: set[str] = set()
        for sfe, doc, proc in self._records():
            if doc.get("desired") != "running":
                continue
            seen.add(sfe)
            if table is None:
                table = proc_table()
            lines += self._sfe(sfe, doc, proc, table, now, now_ns)
        for gone in set(self._last) - seen:
            del self._last[gone]
        return lines

    def _tags(self, doc: Mapping[str, object]) -> dict[str, str]:
        spec = doc["spec"]
        assert isinstance(spec, dict)
        tags = {k: str(spec.get(k) or "") for k in ("sfc", "sfci", "sf", "sfe", "cluster")}
        tags.update(
            tenant=str(spec.get("tenant") or ""),
            fqdn=str(spec.get("fqdn") or ""),
            host=self.host,
        )
        return tags

    def _allowed_cores(self, doc: Mapping[str, object]) -> float:
        spec, manifest = doc.get("spec"), doc.get("manifest")
        resources = manifest.get("resources") if isinstance(manifest, dict) else None
        for source in (spec, resources):  # as the VIM's limits: the spec's, else the image's
            if isinstance(source, dict) and isinstance(source.get("cpus"), (int, float)):
                cpus = float(source["cpus"])
                if cpus > 0:
                    return min(cpus, float(self.cores))
        return float(self.cores)

    def _sfe(
        self,
        sfe: str,
        doc: Mapping[str, object],
        proc: ProcId | None,
        table: Mapping[int, ProcEntry],
        now: float,
        now_ns: int,
    ) -> list[str]:
        tags = self._tags(doc)
        restarts = int(doc.get("restarts") or 0)  # type: ignore[call-overload]
        root = table.get(proc.pid) if proc is not None else None
        if proc is None or root is None or root.start != proc.start:
            self._last.pop(sfe, None)
            lookup = {"pid_count": 0, "running": 0, "restarts": restarts}
            return [point("procstat_lookup", tags, lookup, now_ns)]
        members = tree(proc.pid, table)
        user_s = sum(m.user_s for m in members)
        system_s = sum(m.system_s for m in members)
        group = self.cgroup_base / sfe if self.cgroup_base is not None else None
        from_cgroup = _cgroup_cpu(group) if group is not None else None
        if from_cgroup is not None:
            user_s, system_s = from_cgroup
        fields: dict[str, FieldValue] = {
            "cpu_time_user": user_s,
            "cpu_time_system": system_s,
            "memory_rss": sum(m.rss_bytes for m in members),
            "num_threads": sum(m.threads for m in members),
            "pid": proc.pid,
            "restarts": restarts,
        }
        lines: list[str] = []
        last = self._last.get(sfe)
        self._last[sfe] = _Last(proc, now, user_s, system_s)
        if last is not None and last.proc == proc and now > last.time:
            elapsed = now - last.time
            # A member leaving the tree may lower the sums: never a negative usage.
            user = max(0.0, user_s - last.user_s) / elapsed * 100
            system = max(0.0, system_s - last.system_s) / elapsed * 100
            fields["cpu_usage"] = user + system  # of one core, as Telegraf's procstat
            share = self._allowed_cores(doc)
            cpu = {
                "usage_user": min(100.0, user / share),
                "usage_system": min(100.0, system / share),
                "usage_idle": max(0.0, 100.0 - (user + system) / share),
            }
            lines.append(point("cpu", {"cpu": "sfe", **tags}, cpu, now_ns))
        lines.append(point("procstat", tags, fields, now_ns))
        lookup = {"pid_count": len(members), "running": 1, "restarts": restarts}
        lines.append(point("procstat_lookup", tags, lookup, now_ns))
        lines += self._net(members, tags, now_ns)
        return lines

    def _net(self, members: list[ProcEntry], tags: dict[str, str], now_ns: int) -> list[str]:
        for member in members:
            ns = _netns(member.pid)
            if ns is not None and ns != self._own_netns:
                counters = net_dev(Path(f"/proc/{member.pid}/net/dev"))
                return [
                    point("net", {"interface": name, **tags}, dict(values), now_ns)
                    for name, values in sorted(counters.items())
                    if name != "lo"
                ]
        return []


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class HostSampler:
    """This host's `cpu` (cpu-total), `mem`, `disk` (of `disk_path`), `net` and `system`,
    tagged with `host` and, one copy each, every cluster in `clusters`."""

    def __init__(
        self, clusters: Iterable[str], disk_path: Path, *, host: str | None = None
    ) -> None:
        self.clusters = sorted(set(clusters))
        self.disk_path = disk_path
        self.host = host or socket.gethostname()
        self._last_cpu: list[int] | None = None

    def sample(self, now_ns: int | None = None) -> list[str]:
        now_ns = time.time_ns() if now_ns is None else now_ns
        measured: list[tuple[str, dict[str, str], dict[str, FieldValue]]] = []
        cpu = self._cpu()
        if cpu is not None:
            measured.append(("cpu", {"cpu": "cpu-total"}, cpu))
        for name, fields in (("mem", _mem()), ("system", _system())):
            if fields:
                measured.append((name, {}, fields))
        disk = _disk(self.disk_path)
        if disk:
            measured.append(("disk", {"path": str(self.disk_path)}, disk))
        for interface, values in sorted(net_dev(Path("/proc/net/dev")).items()):
            measured.append(("net", {"interface": interface}, dict(values)))
        return [
            point(name, {**extra, "host": self.host, "cluster": cluster}, fields, now_ns)
            for cluster in self.clusters
            for name, extra, fields in measured
        ]

    def _cpu(self) -> dict[str, FieldValue] | None:
        try:
            first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            now = [int(x) for x in first[1 : 1 + len(_CPU_FIELDS)]]
        except (OSError, ValueError):
            return None
        last, self._last_cpu = self._last_cpu, now
        if last is None:
            return None  # usage is a rate: the first sample has nothing to compare with
        delta = [max(0, a - b) for a, b in zip(now, last, strict=False)]
        total = sum(delta)
        if total <= 0:
            return None
        return {
            f"usage_{name}": 100.0 * d / total for name, d in zip(_CPU_FIELDS, delta, strict=False)
        }


def _mem() -> dict[str, FieldValue]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024
    if "MemTotal" not in values:
        return {}
    total = values["MemTotal"]
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return {
        "total": total,
        "available": available,
        "free": values.get("MemFree", 0),
        "cached": values.get("Cached", 0),
        "buffered": values.get("Buffers", 0),
        "used": total - available,
        "used_percent": 100.0 * (total - available) / total if total else 0.0,
        "available_percent": 100.0 * available / total if total else 0.0,
    }


def _system() -> dict[str, FieldValue]:
    try:
        load = Path("/proc/loadavg").read_text().split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {
        "load1": float(load[0]),
        "load5": float(load[1]),
        "load15": float(load[2]),
        "n_cpus": _cores(),
        "uptime": int(uptime),
    }


def _disk(path: Path) -> dict[str, FieldValue]:
    try:
        st = os.statvfs(path)
    except OSError:
        return {}
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    usable = used + free
    return {
        "total": total,
        "free": free,
        "used": used,
        "used_percent": 100.0 * used / usable if usable else 0.0,
        "inodes_total": st.f_files,
        "inodes_free": st.f_ffree,
        "inodes_used": st.f_files - st.f_ffree,
    }
