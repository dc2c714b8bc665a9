"""Confinement of SFE processes with bubblewrap (issue 11): the command line and its inputs.

Each SFE runs as ``bwrap ... -- [setpriv ... --] <entrypoint>``: new PID, mount, IPC and UTS
(and, where possible, cgroup) namespaces; the host's network is kept, because SFEs listen on
host ports that the service routers and the VIM's health checks reach on loopback. Inside:

- ``/app``: the unpacked image, read-only, the working directory;
- ``/home/sfe``: the SFE's private writable directory (``HOME``), owned by its uid;
- ``/tmp`` and ``/dev/shm``: private tmpfs; ``/proc``: a fresh procfs of its own PID namespace;
  ``/dev``: the minimal device set bwrap makes (null, zero, urandom, tty, pts...);
- read-only from the host: ``/usr`` (and the ``/bin``, ``/lib*`` symlinks or directories), a
  few files of ``/etc`` (TLS roots, name resolution, time zone, the loader cache,
  alternatives), the Python interpreter SF entrypoints use (its prefixes and the directories on
  its ``sys.path``) and paths the operator adds; ``/etc/passwd`` and ``/etc/group`` are written
  for the SFE and name only root, the SFE's user and nobody.

Nothing else of the host is visible: not the platform's state or configuration, not the other
SFEs' directories, not /root or /home, not /sys, not /run.

Who the SFE runs as. When the controller is root, bwrap runs privileged (no user namespace)
and the command is ``setpriv`` switching to the tenant's uid and gid, allocated once per tenant
from a configurable range (200000-265535 by default) and persisted in ``uids.json``: a real,
unprivileged host uid with no capabilities, no supplementary groups and no_new_privs. When the
controller is not root, bwrap makes a user namespace instead and the SFE keeps the operator's
uid (the kernel offers no other without a setuid helper): still confined by the namespaces and
mounts, but not by a uid of its own.

The process the VIM tracks is bwrap itself (it leads the SFE's process group); bwrap's reaper
is PID 1 of the namespace and stays in that group, so SIGKILL to the group ends the reaper and
with it, by the kernel, everything in the namespace, even processes that left the group.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flame.common.atomicfile import atomic_write_private

__all__ = [
    "APP_DIR",
    "DEFAULT_UIDS",
    "HOME_DIR",
    "Layout",
    "Sandbox",
    "SandboxUnavailable",
    "UidAllocator",
    "UidsExhausted",
    "bwrap_argv",
    "protected_paths",
    "refusal",
    "visible_path",
]

APP_DIR = "/app"
HOME_DIR = "/home/sfe"
VENV_DIR = "/opt/flame/venv"  # an image's own Python environment (flame.sfemc.vim.pyenv)
USER_NAME = "sfe"
DEFAULT_UIDS = range(200_000, 265_536)
DEFAULT_TMP_BYTES = 256 * 1024 * 1024  # /tmp when the spec gives no disk limit

# The top-level host names that hold programs and libraries: symlinks on merged-/usr systems.
_SYSTEM = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Of /etc, only what programs need to run, resolve names and check TLS certificates.
_ETC = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl/certs",  # not ssl/private
    "ssl/openssl.cnf",
    "pki/ca-trust/extracted",  # the same on Fedora-like hosts
    "pki/tls/certs",
    "pki/tls/openssl.cnf",
    "timezone",
)
MIN_BWRAP = (0, 8)  # --disable-userns, --size and --perms for --tmpfs
_PROBE_TIMEOUT_S = 30.0


class SandboxUnavailable(Exception):
    """This host cannot confine SFEs; the message says why."""


class UidsExhausted(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Layout:
    """What one sandbox is made of; `bwrap_argv` turns it into a command line."""

    bwrap: str
    app: Path  # host directory mounted read-only on /app
    home: Path  # host directory mounted read-write on /home/sfe
    etc_files: tuple[tuple[Path, str], ...]  # host file -> path in the sandbox (read-only)
    ro_paths: tuple[Path, ...] = ()  # host paths mounted read-only at the same place
    symlinks: tuple[tuple[str, str], ...] = ()  # (target, path in the sandbox)
    uid: int = 0
    gid: int = 0
    setpriv: str | None = None  # root: switch to uid/gid with it; None: a user namespace
    tmp_bytes: int = DEFAULT_TMP_BYTES
    venv: Path | None = None  # host directory mounted read-only on VENV_DIR


def bwrap_argv(layout: Layout, command: Sequence[str]) -> list[str]:
    """The bwrap command line that runs `command` confined as `layout` says."""
    argv = [
        layout.bwrap,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    if layout.setpriv is None:
        # Not root: a user namespace maps our own uid; nested user namespaces are refused.
        argv += ["--unshare-user", "--uid", str(layout.uid), "--gid", str(layout.gid)]
        argv += ["--disable-userns"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
    argv += ["--size", str(layout.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    ro_paths = _outermost(layout.ro_paths)
    destinations = [name for _, name in layout.symlinks] + [str(p) for p in ro_paths]
    destinations += [dest for _, dest in layout.etc_files] + [APP_DIR, HOME_DIR]
    destinations += [VENV_DIR] if layout.venv is not None else []
    # Parents bwrap would create itself get mode 0700 (root's, unreadable to the SFE's uid).
    made = {"/", "/proc", "/dev", "/tmp", *(name for _, name in layout.symlinks)}
    for parent in _parents(destinations, made, ro_paths):
        argv += ["--perms", "0755", "--dir", parent]
    for target, name in layout.symlinks:
        argv += ["--symlink", target, name]
    for path in ro_paths:
        argv += ["--ro-bind", str(path), str(path)]
    for source, dest in layout.etc_files:
        argv += ["--ro-bind", str(source), dest]
    argv += ["--ro-bind", str(layout.app), APP_DIR, "--bind", str(layout.home), HOME_DIR]
    if layout.venv is not None:
        argv += ["--ro-bind", str(layout.venv), VENV_DIR]
    argv += ["--chdir", APP_DIR]
    if layout.setpriv is not None:
        # bwrap runs privileged (no user namespace) and keeps only what setpriv needs to
        # become the SFE's uid; setuid to a non-zero uid then clears every capability.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--", layout.setpriv]
        argv += [f"--reuid={layout.uid}", f"--regid={layout.gid}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--bounding-set=-all", "--nnp"]
    argv += ["--", *command]
    return argv


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths not inside another one of them, sorted."""
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: p.parts):
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _parents(destinations: Iterable[str], made: set[str], mounted: Sequence[Path]) -> list[str]:
    parents: list[str] = []
    for dest in destinations:
        for parent in reversed(Path(dest).parents):
            name = str(parent)
            if name in made or any(parent.is_relative_to(m) for m in mounted):
                continue
            made.add(name)
            parents.append(name)
    return parents


def visible_path(path: Path, mounted: Sequence[Path]) -> bool:
    """Whether a host path is visible inside the sandbox (at the same place)."""
    return any(path.is_relative_to(m) for m in mounted)


# -- uids ----------------------------------------------------------------------------------


class UidAllocator:
    """``{tenant: uid}`` in one JSON file, allocated from `uids` under an exclusive lock.

    A uid is never reused for another tenant while the file lives; uids that the host's user
    or group database names are skipped.
    """

    def __init__(self, path: Path, uids: range) -> None:
        self.path = path
        self.uids = uids

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                table: dict[str, int] = (
                    json.loads(self.path.read_text()) if self.path.exists() else {}
                )
                before = dict(table)
                yield table
                if table != before:
                    atomic_write_private(self.path, json.dumps(table, sort_keys=True).encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def uid_for(self, tenant: str) -> int:
        with self._locked() as table:
            uid = table.get(tenant)
            if uid is not None and uid in self.uids:
                return uid
            taken = set(table.values())
            for candidate in self.uids:
                if candidate not in taken and not _host_id_exists(candidate):
                    table[tenant] = candidate
                    return candidate
        raise UidsExhausted(
            f"no free sandbox uid for tenant {tenant!r}: all {len(self.uids)} of "
            f"{self.uids.start}-{self.uids.stop - 1} are taken; give the VIM a larger uid range"
        )

    def table(self) -> dict[str, int]:
        with self._locked() as table:
            return dict(table)


def _host_id_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        pass
    else:
        return True
    try:
        grp.getgrgid(uid)
    except KeyError:
        return False
    return True


# -- the sandbox of one VIM ------------------------------------------------------------------


@dataclass
class Sandbox:
    """The sandbox settings of one process VIM, and whether this host can apply them."""

    state_dir: Path  # where uids.json and the probe's scratch directory live (the VIM root)
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"
    uids: range = DEFAULT_UIDS
    python: str | None = None  # the interpreter `python3` entrypoints run on: made visible
    extra_ro_paths: Sequence[Path] = ()
    protected: Sequence[Path] = ()  # never mounted, nor any directory holding one of them
    _checked: bool = field(default=False, init=False)
    _problem: str | None = field(default=None, init=False)
    _ro_paths: tuple[Path, ...] = field(default=(), init=False)
    _symlinks: tuple[tuple[str, str], ...] = field(default=(), init=False)
    _tools: tuple[str, str | None] = field(default=("", None), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.allocator = UidAllocator(self.state_dir / "uids.json", self.uids)
        self.privileged = os.geteuid() == 0

    # -- availability --

    def problem(self) -> str | None:
        """Why this host cannot sandbox SFEs, or None if it can (checked once, by a real run)."""
        with self._lock:
            if not self._checked:
                self._problem = self._check()
                self._checked = True
            return self._problem

    def _check(self) -> str | None:
        bwrap = shutil.which(self.bwrap)
        if bwrap is None:
            return f"bubblewrap is not installed ({self.bwrap!r} not found)"
        try:
            said = subprocess.run(
                [bwrap, "--version"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.split()
            version = tuple(int(x) for x in said[-1].split(".")[:2])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
            return f"{bwrap} --version failed: {exc}"
        if version < MIN_BWRAP:
            return f"bubblewrap {said[-1]} is too old: 0.8 or later is needed"
        setpriv: str | None = None
        if self.privileged:
            setpriv = shutil.which(self.setpriv)
            if setpriv is None:
                return f"setpriv (util-linux) is not installed ({self.setpriv!r} not found)"
        self._tools = (bwrap, setpriv)
        try:
            self._ro_paths, self._symlinks = self._host_view()
        except ValueError as exc:  # an operator's read-only path that would show too much
            return str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot tell what the interpreter {self.python} needs: {exc}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".sandbox-probe-", dir=self.state_dir))
        (scratch / "app").mkdir()
        (scratch / "home").mkdir()
        probe = [self.python, "-c", "pass"] if self.python else ["/bin/sh", "-c", "exit 0"]
        try:
            uid = self.uids.start if self.privileged else os.getuid()
            gid = self.uids.start if self.privileged else os.getgid()
            self.write_etc(scratch / "etc", uid, gid)
            layout = self.layout(scratch / "app", scratch / "home", scratch / "etc", uid, gid)
            result = subprocess.run(
                bwrap_argv(layout, probe),
                cwd=scratch / "app",
                env={"PATH": os.defpath},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap could not be run: {exc}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if result.returncode != 0:
            said = result.stderr.decode(errors="replace").strip().splitlines()
            why = said[-1] if said else f"exit status {result.returncode}"
            return f"bubblewrap could not start a sandbox here ({why})"
        return None

    def _host_view(self) -> tuple[tuple[Path, ...], tuple[tuple[str, str], ...]]:
        symlinks: list[tuple[str, str]] = []
        ro: list[Path] = [Path("/usr")]
        for name in _SYSTEM:
            host = Path("/") / name
            if host.is_symlink():
                symlinks.append((os.readlink(host), str(host)))
            elif host.is_dir():
                ro.append(host)
        candidates = list(self.extra_ro_paths)
        if self.python:
            candidates += _interpreter_paths(self.python)
        protected = [Path(os.path.realpath(p)) for p in self.protected]
        links: dict[str, str] = {}
        for path in candidates:
            real, named = Path(os.path.realpath(path)), Path(os.path.abspath(path))
            if not real.exists():
                continue
            hides = [p for p in protected if p.is_relative_to(real)]
            if hides:
                if path in self.extra_ro_paths:
                    raise ValueError(f"{path} would show {hides[0]} to SFEs: give a narrower path")
                continue  # an interpreter path holding the platform's state: never shown
            ro.append(real)
            # Reached through a link (the last component only; others are whole mounts):
            # the same link in the sandbox.
            if named != real and os.path.realpath(named.parent) == str(named.parent):
                links[str(named)] = str(real)
        kept = _outermost(ro)
        for name, target in sorted(links.items()):
            if not visible_path(Path(name), [*kept, *(Path(n) for _, n in symlinks)]):
                symlinks.append((target, name))
        return tuple(kept), tuple(symlinks)

    # -- one SFE --

    def identity(self, tenant: str) -> tuple[int, int]:
        """The uid and gid `tenant`'s SFEs run as (the caller's own when not root)."""
        if not self.privileged:
            return os.getuid(), os.getgid()
        uid = self.allocator.uid_for(tenant)
        return uid, uid

    def layout(
        self,
        app: Path,
        home: Path,
        etc: Path,
        uid: int,
        gid: int,
        tmp_bytes: int | None = None,
        venv: Path | None = None,
    ) -> Layout:
        if self._tools[0] == "":  # not checked yet (the probe itself calls this after _check)
            problem = self.problem()
            if problem is not None:
                raise SandboxUnavailable(problem)
        bwrap, setpriv = self._tools
        etc_files = [(etc / "passwd", "/etc/passwd"), (etc / "group", "/etc/group")]
        for name in _ETC:
            host = Path("/etc") / name
            if host.exists():  # follows symlinks: a dangling one is left out
                etc_files.append((host, str(host)))
        return Layout(
            bwrap=bwrap,
            app=app,
            home=home,
            etc_files=tuple(etc_files),
            ro_paths=self._ro_paths,
            symlinks=self._symlinks,
            uid=uid,
            gid=gid,
            setpriv=setpriv,
            tmp_bytes=tmp_bytes or DEFAULT_TMP_BYTES,
            venv=venv,
        )

    def mounted(self) -> list[Path]:
        """Host paths visible in the sandbox at the same place (programs can come from there)."""
        return [*self._ro_paths, *(Path(name) for _, name in self._symlinks)]

    def search_path(self, host_path: str | None) -> str:
        """The controller's PATH without the directories the sandbox does not show."""
        mounted = self.mounted()
        kept = [
            d
            for d in (host_path or "").split(os.pathsep)
            if d and os.path.isabs(d) and visible_path(Path(d), mounted)
        ]
        return os.pathsep.join(dict.fromkeys(kept)) or "/usr/local/bin:/usr/bin:/bin"

    def resolve(self, program: str, app: Path, search_path: str) -> None:
        """Raise FileNotFoundError if `program` cannot be run inside the sandbox."""
        if program.startswith(VENV_DIR + "/"):
            return  # the image's venv, made at placement (flame.sfemc.vim.pyenv)
        if "/" in program:
            if program.startswith("/"):
                if program.startswith(APP_DIR + "/"):
                    host = app / program.removeprefix(APP_DIR + "/")
                elif visible_path(Path(program), self.mounted()):
                    host = Path(program)
                else:
                    raise FileNotFoundError(f"{program} is not visible inside the sandbox")
            else:
                host = app / program
            if not (host.is_file() and os.access(host, os.X_OK)):
                raise FileNotFoundError(f"no executable {program} in the image")
            return
        if shutil.which(program, path=search_path) is None:
            raise FileNotFoundError(f"{program} is not on the sandbox's PATH ({search_path})")

    @staticmethod
    def write_etc(etc: Path, uid: int, gid: int) -> None:
        """The sandbox's /etc/passwd and /etc/group: root, the SFE's user, nobody."""
        etc.mkdir(mode=0o755, exist_ok=True)
        etc.chmod(0o755)
        passwd = (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{USER_NAME}:x:{uid}:{gid}:FLAME service function endpoint:{HOME_DIR}:"
            "/usr/sbin/nologin\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        group = f"root:x:0:\n{USER_NAME}:x:{gid}:\nnogroup:x:65534:\n"
        for name, text in (("passwd", passwd), ("group", group)):
            path = etc / name
            path.write_text(text)
            path.chmod(0o644)

    @staticmethod
    def prepare_home(home: Path, uid: int, gid: int) -> None:
        """The private directory, owned by the SFE's uid (re-owned if the uid changed)."""
        home.mkdir(mode=0o700, exist_ok=True)
        st = home.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            for top, dirs, files in os.walk(home, followlinks=False):
                for name in dirs + files:
                    entry = Path(top, name)
                    # Never through a link: the SFE may have planted one to a platform file.
                    if entry.is_symlink() or (entry.is_file() and entry.lstat().st_nlink > 1):
                        continue
                    os.chown(entry, uid, gid, follow_symlinks=False)
            os.chown(home, uid, gid, follow_symlinks=False)
        home.chmod(0o700)

    def describe(self, uid: int, gid: int) -> str:
        if self.privileged:
            return f"bwrap uid={uid} gid={gid}"
        return f"bwrap user namespace, uid={uid} (the platform's: not root)"


@functools.cache
def _interpreter_paths(python: str) -> tuple[Path, ...]:
    """What running `python` needs: its prefixes and the directories of its sys.path."""
    code = (
        "import json, sys; print(json.dumps([sys.executable, sys.prefix, sys.base_prefix, "
        "sys.exec_prefix, sys.base_exec_prefix, *sys.path]))"
    )
    out = subprocess.run(
        [python, "-I", "-c", code],
        env={"PATH": os.defpath},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_PROBE_TIMEOUT_S,
        check=True,
    ).stdout
    found: list[str] = json.loads(out)
    exe = Path(found[0])
    paths = [exe.parent, Path(os.path.realpath(exe)).parent]
    paths += [Path(p) for p in found[1:] if p and os.path.isdir(p)]
    return tuple(paths)


def refusal(problem: str, mode: str) -> str:
    """Why an SFE is refused when the host cannot sandbox it (`mode`: the VIM's sandbox mode)."""
    if mode == "required":
        return (
            f"cannot sandbox tenant code on this host: {problem}; this VIM requires the sandbox "
            "(sandbox='required'). Install bubblewrap 0.8 or later (Debian/Ubuntu: apt-get "
            "install bubblewrap); run the orchestrator as root to give each tenant its own uid"
        )
    return (
        f"refusing to run tenant code unconfined: {problem}. Install bubblewrap (Debian/Ubuntu: "
        "apt-get install bubblewrap) so that SFEs run sandboxed, or pass "
        "--allow-unconfined-sfes to 'flame serve orchestrator' or 'flame up' to run them as the "
        "platform's own user, able to read its configuration, tokens and state"
    )


def protected_paths(root: Path) -> tuple[Path, ...]:
    """What an SFE must never see: the VIM's root and the platform user's home and config."""
    paths = [root.absolute(), root.absolute().parent]
    with contextlib.suppress(RuntimeError, KeyError):
        paths.append(Path.home())
    with contextlib.suppress(KeyError):
        paths.append(Path(pwd.getpwuid(os.geteuid()).pw_dir))
    if os.environ.get("XDG_CONFIG_HOME"):
        paths.append(Path(os.environ["XDG_CONFIG_HOME"]))
    return tuple(paths)
