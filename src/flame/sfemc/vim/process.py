"""The process VIM (ORCH-6 on one machine): each SFE is a local process from its image.

Per SFE, under ``<root>/sfes/<sfe>/``: ``state.json`` (spec, image, host ports, what is wanted,
restarts, last crash), ``pid.json`` (pid and start time, written by the child itself before
exec), ``app/`` (the unpacked image, the working directory) and ``sfe.log`` (stdout and stderr,
interleaved in order). Everything the driver knows is on disk, so a controller killed with
SIGKILL and started again adopts the SFE processes still running (by pid *and* start time, so a
recycled pid is never taken for an SFE) and restarts those that should run but died meanwhile.

SFE processes outlive the controller on purpose (`close()` leaves them running); `stop()` and
`remove()` end them: SIGTERM to the whole process group, SIGKILL after the grace period.

Tenant code runs confined (`flame.sfemc.vim.sandbox`): bubblewrap namespaces, the image
read-only, a private ``home/`` as HOME, its tenant's own uid. Where the host cannot sandbox, SFEs
are refused unless the operator explicitly allowed unconfined ones (``allow_unconfined``).

This module drives the lifecycle; its collaborators each keep one concern: `_health` (health
checks), `_sfe_certs` (endpoint certificates for hop-by-hop TLS), `_supervision` (restarts and
certificate renewal), `_env` (the SFE's environment), `_sfe` (the record of one SFE).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from flame.common.atomicfile import atomic_write_private
from flame.sfemc.images import ImageError, ImageRepository
from flame.sfemc.vim._env import sfe_environment
from flame.sfemc.vim._health import HealthProber
from flame.sfemc.vim._ports import PortAllocator, PortsExhausted
from flame.sfemc.vim._proc import (
    CgroupLimiter,
    Limits,
    ProcId,
    find_cgroup2,
    read_pid_file,
    rlimits_for,
    signal_group,
    spawn,
    start_time,
)
from flame.sfemc.vim._proc import tail as _tail
from flame.sfemc.vim._records import (
    placed_images,
    readable_by_all,
    spec_to_json,
)
from flame.sfemc.vim._sfe import (
    Sfe,
    group_running,
    tls_on,
)
from flame.sfemc.vim._sfe_certs import SfeCerts
from flame.sfemc.vim._supervision import Supervisor
from flame.sfemc.vim.base import (
    EndpointSpec,
    VimError,
    VimState,
    VimStatus,
)
from flame.sfemc.vim.endpoint_tls import EndpointCertSource, EndpointCertsSetting
from flame.sfemc.vim.pyenv import PyenvError, ensure_venv, venv_argv
from flame.sfemc.vim.sandbox import (
    DEFAULT_UIDS,
    HOME_DIR,
    Sandbox,
    UidsExhausted,
    bwrap_argv,
    protected_paths,
    refusal,
)

__all__ = ["DEFAULT_ROOT", "ProcessVim", "placed_images"]

DEFAULT_ROOT = "vim"  # under the state_dir: where flame.sfemc.runtime keeps the driver

log = logging.getLogger(__name__)

_SFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
SandboxMode = Literal["auto", "required", "off"]


class ProcessVim(EndpointCertsSetting[SfeCerts]):
    """SFEs as local processes; ports from per-cluster ranges (`clusters`: name -> range)."""

    kind = "process"

    def __init__(
        self,
        root_dir: Path,
        clusters: Mapping[str, range | tuple[int, int]],
        repository: ImageRepository,
        *,
        host: str = "127.0.0.1",
        hosts: Mapping[str, str] | None = None,
        grace_s: float = 5.0,
        boot_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.2, 30.0),
        cgroup_root: Path | bool | None = True,
        python: str | None = sys.executable,
        sr_urls: Mapping[str, str] | None = None,
        sandbox: SandboxMode = "auto",
        allow_unconfined: bool = False,
        bwrap: str = "bwrap",
        sandbox_uids: range = DEFAULT_UIDS,
        sandbox_ro_paths: Sequence[Path] = (),
        endpoint_certs: EndpointCertSource | None = None,
    ) -> None:
        """`sandbox`: "auto" confines SFEs when the host can and otherwise refuses them, unless
        `allow_unconfined`; "required" always refuses unconfined SFEs; "off" never confines
        (it needs `allow_unconfined`). `bwrap`: the bubblewrap program; `sandbox_uids`: the
        per-tenant uids (root only); `sandbox_ro_paths`: more host paths SFEs may read.
        `host`: the address SFEs listen on and are registered with; `hosts`: another one for
        some clusters (cluster -> address: the cluster host's address in the topology).
        `endpoint_certs`: where SFEs whose image says `tls: true` get their certificates
        (hop-by-hop TLS, `flame.sfemc.vim.endpoint_tls`); None: they run plain."""
        if sandbox not in ("auto", "required", "off"):
            raise ValueError(f"sandbox must be 'auto', 'required' or 'off', not {sandbox!r}")
        if sandbox == "off" and not allow_unconfined:
            raise ValueError(
                "sandbox='off' runs tenant code unconfined, as the platform's own user: "
                "pass allow_unconfined=True to say that this is meant"
            )
        self.root = root_dir
        # cluster -> its service router's URL, given to SFEs as FLAME_SR_URL: an SF calls
        # another SF by FQDN (Host header) through its own cluster's SR, as FLIPS intends.
        self.sr_urls = dict(sr_urls or {})
        self.sfes_dir = root_dir / "sfes"
        self.repository = repository
        self.host = host
        self.hosts = dict(hosts or {})
        self.grace_s = grace_s
        self.boot_timeout_s = boot_timeout_s
        self.backoff_s = backoff_s
        # An entrypoint naming `python3`/`python` runs on this interpreter: the same one on
        # every host, and no PATH shim (pyenv's adds ~250 ms to every boot). None: use PATH.
        self.python = python
        ranges = {
            c: r if isinstance(r, range) else range(r[0], r[1] + 1) for c, r in clusters.items()
        }
        self.ports = PortAllocator(root_dir / "ports.json", ranges, host, self.hosts)
        # True: detect a usable cgroup v2; a Path: use it; None/False: rlimits only.
        found = find_cgroup2() if cgroup_root is True else cgroup_root or None
        self.cgroups = CgroupLimiter(found, root_dir) if isinstance(found, Path) else None
        self.sandbox_mode: SandboxMode = sandbox
        self.allow_unconfined = allow_unconfined
        self.sandbox = (
            None
            if sandbox == "off"
            else Sandbox(
                root_dir,
                bwrap=bwrap,
                uids=sandbox_uids,
                python=python,
                extra_ro_paths=tuple(sandbox_ro_paths),
                protected=protected_paths(root_dir),
            )
        )
        self._warned_unconfined = False
        self._sfes: dict[str, Sfe] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one per SFE, also before it is placed
        # SFEs being placed right now: their ports are taken before their state.json exists,
        # so a concurrent placement must not reclaim them as a dead SFE's.
        self._placing: set[str] = set()
        self._placing_lock = threading.Lock()  # changed on the loop, read in placing threads
        # Collaborators, each in its own module: certificates, health checks, supervision.
        self._certs = SfeCerts(endpoint_certs, self._set)
        self.health = HealthProber(self._host)
        self.supervisor = Supervisor(
            certs=self._certs,
            health=self.health,
            host_of=self._host,
            launch=self._launch,
            terminate=self._terminate,
            record=self._set,
            backoff_s=backoff_s,
        )
        self.sfes_dir.mkdir(parents=True, exist_ok=True)

    # -- the VimDriver interface -------------------------------------------------------------

    async def place(self, spec: EndpointSpec) -> VimStatus:
        if not _SFE_ID.match(spec.sfe):
            raise VimError(
                spec.sfe,
                "an SFE id may hold letters, digits, '.', '_' and '-' only",
                permanent=True,
            )
        if spec.cluster not in self.ports.ranges:
            raise VimError(
                spec.sfe,
                f"cluster {spec.cluster!r} has no port range in this process VIM "
                f"(known: {', '.join(sorted(self.ports.ranges)) or 'none'})",
                permanent=True,
            )
        lock = self._lock_for(spec.sfe)
        async with lock:
            rec = self._load(spec.sfe)
            if rec is not None and rec.doc["spec"] == spec_to_json(spec):
                return self._status(rec)  # already placed as asked
            if rec is not None and rec.alive():
                raise VimError(
                    spec.sfe,
                    "already placed and running with another spec: stop it before re-placing",
                )
            if rec is not None:  # re-placing with another spec: the old record's watch ends
                await self.supervisor.unwatch(rec)
            with self._placing_lock:
                self._placing.add(spec.sfe)
            try:
                return await asyncio.to_thread(self._place_sync, spec, lock)
            finally:
                with self._placing_lock:
                    self._placing.discard(spec.sfe)

    def _place_sync(self, spec: EndpointSpec, lock: asyncio.Lock) -> VimStatus:
        self._confinement(spec.sfe)  # refuse now what could not run (checks the host once)
        try:
            digest = self.repository.resolve(spec.image, spec.tenant)
            path = self.sfes_dir / spec.sfe
            tmp = self.sfes_dir / f".{spec.sfe}.placing"
            shutil.rmtree(tmp, ignore_errors=True)  # from a controller killed mid-place
            tmp.mkdir()
            # Integrity is checked here, on every placement: unpack hashes what it extracts.
            manifest = self.repository.unpack(digest, tmp / "app")
            readable_by_all(tmp / "app")  # the SFE's own uid reads it (read-only)
            venv = (  # the image's own packages, installed once per digest
                ensure_venv(self.root, digest, tmp / "app", manifest.wheels, python=self.python)
                if manifest.wheels
                else None
            )
        except (ImageError, PyenvError) as exc:
            shutil.rmtree(self.sfes_dir / f".{spec.sfe}.placing", ignore_errors=True)
            raise VimError(spec.sfe, getattr(exc, "message", str(exc)), permanent=True) from exc
        ports = spec.ports or manifest.ports
        # Who is alive: those being placed first, then those on disk. An SFE leaves the
        # placing set only after its directory is in place, so in this order none falls
        # between the two (the other order could miss one finishing in between).
        with self._placing_lock:
            live = set(self._placing)
        live |= self._known() | {spec.sfe}
        try:
            host_ports = self.ports.allocate(spec.cluster, spec.sfe, [p.name for p in ports], live)
        except PortsExhausted as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VimError(spec.sfe, str(exc)) from exc
        doc = {
            "spec": spec_to_json(spec),
            "digest": digest,
            "manifest": manifest.to_json(),
            "ports": host_ports,
            "port_specs": [dataclasses.asdict(p) for p in ports],
            "desired": "placed",
            "restarts": 0,
            "reason": None,
            "limits": None,
            "venv": str(venv) if venv else None,
        }
        atomic_write_private(tmp / "state.json", json.dumps(doc, indent=1).encode())
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)  # the SFE exists on disk all at once, or not at all
        rec = Sfe(spec.sfe, path, doc, lock=lock)
        self._sfes[spec.sfe] = rec
        log.info("placed %s from %s, ports %s", spec.sfe, digest[:19], host_ports)
        return self._status(rec)

    async def boot(self, sfe: str) -> VimStatus:
        rec = self._require(sfe)
        async with rec.lock:
            if rec.alive():  # running already (or adopted): never start a second one
                if rec.desired == "running" and rec.healthy:
                    return self._status(rec)
                self._set(rec, desired="running", reason=None)
            else:
                self._set(rec, desired="running", reason=None)
                try:
                    await self._certs.fetch(rec, self._host(rec))
                except VimError as exc:  # no certificate now: not started, retried
                    self._set(rec, desired="placed", reason=exc.reason)
                    raise
                self._spawn(rec)
            try:
                await self.health.wait_healthy(rec, self.boot_timeout_s)
            except VimError as exc:
                await self._terminate(rec)
                self._set(rec, desired="placed", reason=exc.reason)
                raise
            self.supervisor.watch(rec)
            return self._status(rec)

    async def stop(self, sfe: str) -> VimStatus:
        rec = self._load(sfe)
        if rec is None:
            return VimStatus(sfe, VimState.ABSENT)
        await self.supervisor.unwatch(rec)
        async with rec.lock:
            self._set(rec, desired="stopped")
            await self._terminate(rec)
            return self._status(rec)

    async def remove(self, sfe: str) -> None:
        rec = self._load(sfe)
        if rec is None:
            self.ports.release(sfe)
            return
        await self.stop(sfe)
        async with rec.lock:
            shutil.rmtree(rec.path, ignore_errors=True)
            self.ports.release(sfe)
            if self.cgroups is not None:
                self.cgroups.remove(sfe)
            self._sfes.pop(sfe, None)
        log.info("removed %s", sfe)

    async def status(self, sfe: str) -> VimStatus:
        rec = self._load(sfe)
        if rec is None:
            return VimStatus(sfe, VimState.ABSENT)
        if rec.desired == "running" and rec.task is None and not rec.lock.locked():
            self.supervisor.watch(rec)  # adopted after a controller restart (not mid-boot)
        if rec.healthy is None and rec.alive():
            rec.healthy = await self.health.probe(rec)
        return self._status(rec)

    async def list(self) -> builtins.list[VimStatus]:
        return [await self.status(name) for name in sorted(self._known())]

    async def logs(self, sfe: str, tail: int = 100) -> builtins.list[str]:
        rec = self._require(sfe)
        return _tail(rec.path / "sfe.log", tail)

    async def halt_all(self) -> builtins.list[str]:
        """Stop every running SFE process but keep what is desired, so that the next
        controller boots them again (FLAME-in-a-box's `flame down`, then `flame up`)."""
        halted: builtins.list[str] = []
        for name in sorted(self._known()):
            rec = self._load(name)
            if rec is None:
                continue
            await self.supervisor.unwatch(rec)
            async with rec.lock:
                if rec.alive() or read_pid_file(rec.path) is not None:
                    await self._terminate(rec)
                    halted.append(name)
        return halted

    async def close(self) -> None:
        """Stop supervising; the SFE processes keep running for the next controller."""
        for rec in builtins.list(self._sfes.values()):
            await self.supervisor.unwatch(rec)
        await self._certs.close()
        await self.health.close()

    # -- records -------------------------------------------------------------------------

    def _known(self) -> set[str]:
        return {
            p.name
            for p in self.sfes_dir.iterdir()
            if not p.name.startswith(".") and (p / "state.json").exists()
        }

    def _lock_for(self, sfe: str) -> asyncio.Lock:
        return self._locks.setdefault(sfe, asyncio.Lock())

    def _load(self, sfe: str) -> Sfe | None:
        """The record of `sfe`, read from disk the first time (adoption after a restart)."""
        rec = self._sfes.get(sfe)
        path = self.sfes_dir / sfe
        if rec is not None:
            return rec if path.exists() else None
        if not _SFE_ID.match(sfe):
            return None
        try:
            doc = json.loads((path / "state.json").read_text())
        except FileNotFoundError:
            return None
        rec = Sfe(sfe, path, doc, lock=self._lock_for(sfe))
        proc = read_pid_file(path)
        if proc is not None and proc.alive():
            rec.proc = proc
            rec.started_at = time.monotonic()
            log.info("adopted %s: pid %d still running", sfe, proc.pid)
        self._sfes[sfe] = rec
        return rec

    def _host(self, rec: Sfe) -> str:
        """The address `rec` listens on: its cluster host's."""
        return self.hosts.get(str(rec.doc["spec"]["cluster"]), self.host)

    def _require(self, sfe: str) -> Sfe:
        rec = self._load(sfe)
        if rec is None:
            raise VimError(sfe, "not placed on this VIM: place it first", permanent=True)
        return rec

    def _set(self, rec: Sfe, **changes: Any) -> None:
        rec.doc.update(changes)
        atomic_write_private(rec.path / "state.json", json.dumps(rec.doc, indent=1).encode())

    def _status(self, rec: Sfe) -> VimStatus:
        alive = rec.alive()
        desired = rec.desired
        if desired == "running":
            state = VimState.RUNNING if alive and rec.healthy else VimState.STARTING
        elif desired == "stopped":
            state = VimState.STOPPED
        else:
            state = VimState.FAILED if rec.doc.get("reason") else VimState.PLACED
        return VimStatus(
            sfe=rec.name,
            state=state,
            host=self._host(rec) if alive else None,
            ports=dict(rec.doc["ports"]),
            pid=rec.proc.pid if alive and rec.proc else None,
            restarts=int(rec.doc.get("restarts", 0)),
            reason=rec.doc.get("reason"),
            limits=rec.doc.get("limits"),
            tls=alive and tls_on(rec),
        )

    # -- processes -----------------------------------------------------------------------

    def _confinement(self, sfe: str) -> Sandbox | None:
        """The sandbox for `sfe`; None: run it unconfined (only if the operator allowed it)."""
        if self.sandbox is not None:
            problem = self.sandbox.problem()
            if problem is None:
                return self.sandbox
            if self.sandbox_mode == "required" or not self.allow_unconfined:
                raise VimError(sfe, refusal(problem, self.sandbox_mode), permanent=True)
            if not self._warned_unconfined:
                self._warned_unconfined = True
                log.warning(
                    "SFEs run UNCONFINED, as this controller's user (allowed by the operator): %s",
                    problem,
                )
        return None

    def _spawn(self, rec: Sfe) -> None:
        try:
            sandbox = self._confinement(rec.name)
        except VimError as exc:
            self._set(rec, desired="placed", reason=exc.reason)
            raise
        spec, manifest = rec.spec(), rec.manifest()
        ports: dict[str, int] = rec.doc["ports"]
        home = rec.path / "home"  # the SFE's private directory
        env = sfe_environment(
            spec,
            manifest,
            digest=rec.doc["digest"],
            host=self._host(rec),
            ports=ports,
            home=home,
            sandbox=sandbox,
            sr_url=self.sr_urls.get(spec.cluster),
        )
        limits = Limits(
            cpus=spec.cpus if spec.cpus is not None else manifest.cpus,
            memory_bytes=spec.memory_bytes or manifest.memory_bytes,
            disk_bytes=spec.disk_bytes or manifest.disk_bytes,
        )
        cgroup_procs = None
        rlimits, described = rlimits_for(limits)
        if self.cgroups is not None and (limits.cpus or limits.memory_bytes):
            try:
                cgroup_procs, described = self.cgroups.prepare(spec.sfe, limits)
                rlimits = []
            except OSError as exc:
                described += f" (cgroup v2 refused: {exc})"
        (rec.path / "pid.json").unlink(missing_ok=True)
        venv = Path(rec.doc["venv"]) if rec.doc.get("venv") else None
        argv = list(manifest.entrypoint)
        if venv is not None:  # the image's own environment (flame.sfemc.vim.pyenv)
            argv = venv_argv(argv, venv, sandboxed=sandbox is not None)
        elif self.python and argv[0] in ("python", "python3"):
            argv[0] = self.python
        try:
            if sandbox is not None:
                uid, gid = sandbox.identity(spec.tenant)
                sandbox.prepare_home(home, uid, gid)
                sandbox.write_etc(rec.path / "etc", uid, gid)
                env.update(self._certs.install(rec, home, HOME_DIR, (uid, gid)))
                sandbox.resolve(argv[0], rec.path / "app", env.get("PATH", ""))
                layout = sandbox.layout(
                    rec.path / "app", home, rec.path / "etc", uid, gid, limits.disk_bytes, venv
                )
                argv = bwrap_argv(layout, argv)
                confined = sandbox.describe(uid, gid)
            else:
                home.mkdir(mode=0o700, exist_ok=True)
                env.update(self._certs.install(rec, home, str(home), None))
                confined = "unconfined (allowed by the operator)"
            rec.child = spawn(
                argv,
                cwd=rec.path / "app",
                env=env,
                log=rec.path / "sfe.log",
                pid_dir=rec.path,
                rlimits=rlimits,
                cgroup_procs=cgroup_procs,
            )
        except UidsExhausted as exc:
            self._set(rec, desired="placed", reason=str(exc))
            raise VimError(rec.name, str(exc), permanent=True) from exc
        except (FileNotFoundError, PermissionError, subprocess.SubprocessError) as exc:
            self._set(
                rec, desired="placed", reason=f"cannot start {manifest.entrypoint[0]!r}: {exc}"
            )
            raise VimError(
                rec.name,
                f"cannot start the entrypoint {' '.join(manifest.entrypoint)!r}: {exc}",
                permanent=True,
            ) from exc
        proc = read_pid_file(rec.path)
        rec.proc = proc or ProcId(rec.child.pid, start_time(rec.child.pid) or -1)
        rec.started_at = time.monotonic()
        rec.healthy = False
        self._set(rec, limits=described, sandbox=confined)
        log.info("started %s: pid %d, %s, %s", rec.name, rec.child.pid, confined, described)

    async def _launch(self, rec: Sfe) -> None:
        """Start `rec` with the certificate fetched for it; VimError unless healthy in time."""
        self._spawn(rec)
        await self.health.wait_healthy(rec, self.boot_timeout_s)

    async def _terminate(self, rec: Sfe) -> None:
        """SIGTERM to the group, SIGKILL after the grace period; reap our own child."""
        proc = rec.proc or read_pid_file(rec.path)
        if proc is not None and signal_group(proc, signal.SIGTERM):
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and group_running(proc.pid, rec):
                await asyncio.sleep(0.02)
            if group_running(proc.pid, rec):
                log.warning("%s ignored SIGTERM for %.1fs: SIGKILL", rec.name, self.grace_s)
                signal_group(proc, signal.SIGKILL)
                while group_running(proc.pid, rec):
                    await asyncio.sleep(0.01)
        if rec.child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rec.child.wait(timeout=1.0)
        rec.child = None
        rec.proc = None
        rec.healthy = None
        (rec.path / "pid.json").unlink(missing_ok=True)
