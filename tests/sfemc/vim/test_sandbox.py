"""Sandboxed SFEs (issue 11): tenant code run by the process VIM cannot reach the platform.

Real processes, real bubblewrap, no mocks. The escape test runs one attacking SF twice: in the
sandbox, where every attack must fail while its own work (private dir, /tmp, health check)
succeeds, and unconfined, where the very same attacks must succeed, so that the first run
cannot pass for a reason other than the sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from eventually import eventually
from flame.common.access import PUBLIC, OperatorOnly, require_declared
from flame.common.auth import Role, TokenStore
from flame.common.http_api import BearerAuth, install_errors
from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim.base import VimError, VimState
from flame.sfemc.vim.process import ProcessVim
from flame.sfemc.vim.sandbox import (
    HOME_DIR,
    Layout,
    UidAllocator,
    UidsExhausted,
    bwrap_argv,
)
from ranges import sandbox_uid_base

from .conftest import make_sf, port_base, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="per-tenant sandbox uids need root")
CONTROLLER = Path(__file__).with_name("_sandbox_controller.py")
DEMO = Path(__file__).resolve().parents[3] / "src" / "flame" / "sandbox" / "demo"


def uid_range() -> range:
    # Each xdist worker (and test run) its own uids: tests/ranges.py.
    base = sandbox_uid_base(64)
    return range(base, base + 64)


# -- what runs inside a sandbox, seen from the host ----------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def pid_ns_of(bwrap_pid: int) -> str:
    """The PID namespace of the sandbox bwrap `bwrap_pid` made (its child is PID 1 there).

    Waits for bwrap to have forked it: an SF without ports is "healthy" as soon as its process
    (bwrap) is alive, which can be before bwrap has made the namespace (seen at load)."""
    children = eventually(
        lambda: Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split(),
        until=lambda found: len(found) == 1,
        timeout=15,
        what=f"bwrap {bwrap_pid} to fork the sandbox's first process",
    )
    ns = os.readlink(f"/proc/{children[0]}/ns/pid")
    assert ns != os.readlink("/proc/self/ns/pid")
    return ns


def members(ns: str) -> dict[int, tuple[str, int]]:
    """Live processes of a PID namespace: host pid -> (command name, uid)."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != ns or _stat_fields(int(entry.name))[0] == "Z":
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
        found[int(entry.name)] = ((entry / "comm").read_text().strip(), uid)
    return found


class NsWatch:
    """Every sandbox seen; none may have a live process when the test ends."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def add(self, bwrap_pid: int) -> str:
        ns = pid_ns_of(bwrap_pid)
        self.seen.add(ns)
        return ns

    def leftovers(self) -> dict[str, dict[int, tuple[str, int]]]:
        return {ns: m for ns in self.seen if (m := members(ns))}


@pytest.fixture
def ns_watch() -> Iterator[NsWatch]:
    watch = NsWatch()
    yield watch
    left = watch.leftovers()
    for procs in left.values():
        for pid in procs:
            os.kill(pid, signal.SIGKILL)
    assert not left, f"sandboxed processes left running: {left}"


async def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- a fake platform with secrets to steal -------------------------------------------------------


class Platform:
    """A platform user's home (config with the operator token), its state dir (token store,
    SFEMC store, the VIM root) and a platform process to signal."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "platform-home"
        self.config = self.home / ".config" / "flame" / "config.toml"
        self.state = self.home / ".local" / "share" / "flame"
        self.tokens = self.state / "tokens.json"
        self.store = self.state / "sfemc.sqlite3"
        self.vim_root = self.state / "vim"
        self.stoppers: list[Callable[[], object]] = []
        # A real token store and the operator's real token in its config, as `flame up` leaves.
        self.operator_token = TokenStore(self.tokens).issue("flame-up-operator", Role.OPERATOR)
        for path, text in (
            (self.config, f'token = "{self.operator_token}"\n'),
            (self.store, "SQLite format 3\0 endpoints of every tenant\n"),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o600)
        self.home.chmod(0o700)


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    found = Platform(tmp_path)
    monkeypatch.setenv("HOME", str(found.home))  # the controller's HOME, as in production
    yield found
    for stop in found.stoppers:
        stop()


@pytest_asyncio.fixture
async def sandboxed(
    platform: Platform, repo: ImageRepository, ns_watch: NsWatch
) -> AsyncIterator[ProcessVim]:
    base = port_base() + 40
    vim = ProcessVim(
        platform.vim_root,
        {"c1": range(base, base + 30)},
        repo,
        grace_s=1.0,
        boot_timeout_s=20.0,
        backoff_s=(0.05, 0.5),
        sandbox="required",
        sandbox_uids=uid_range(),
    )
    yield vim
    for status in await vim.list():
        await vim.remove(status.sfe)
    await vim.close()


def operator_api(platform: Platform) -> str:
    """A real control API on loopback (bearer tokens from the platform's store, an operator-only
    route and a public one), served until the test ends, as the orchestrator and PCE are."""
    app = FastAPI()
    app.add_middleware(BearerAuth, tokens=TokenStore(platform.tokens))
    install_errors(app, "the test API")

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/operator-only")
    async def secret(caller: OperatorOnly) -> dict[str, str]:
        return {"by": caller.name}

    require_declared(app)
    port = free_port()  # not a released bind(0) port: that may go to another server first
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="operator-api", daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    platform.stoppers.append(stop)
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test API did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}"


def helper_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


ATTACKER = r"""
import http.server, json, os, re, signal, sys, urllib.error, urllib.request

report = {}

def attempt(into, name, action):
    try:
        got = action()
    except Exception as exc:  # every failure counts as the attack failing
        into[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        into[name] = {"ok": True, "got": repr(got)[:60]}

def read(path):
    with open(path, "rb") as f:
        return f.read(64)

def write(path):
    with open(path, "w") as f:
        f.write("written by the SFE")
    return path

def platform_in_proc():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"pytest" in read(f"/proc/{entry}/cmdline"):
                    return entry
            except OSError:
                pass
    raise LookupError("no platform process in /proc")

attacks = {}
for name, path in json.loads(os.environ["STEAL"]).items():
    attacks["read " + name] = lambda p=path: read(p)
for name, path in json.loads(os.environ["SNOOP"]).items():
    attacks["list " + name] = lambda p=path: os.listdir(p)
platform = int(os.environ["PLATFORM_PID"])
attacks["read the platform's /proc environ"] = lambda: read(f"/proc/{platform}/environ")
attacks["see the platform in /proc"] = platform_in_proc
attacks["signal 0 to the platform"] = lambda: os.kill(platform, 0)
attacks["SIGTERM to a platform process"] = lambda: os.kill(int(os.environ["HELPER_PID"]), 15)
attacks["write into its own image"] = lambda: write("injected.txt")

def call_operator_api():
    # Any token it can find: in its environment, in any file it could read.
    pattern = re.compile(r"flm_[A-Za-z0-9_-]{43}")
    found = set()
    for value in os.environ.values():
        found |= set(pattern.findall(value))
    for path in json.loads(os.environ["STEAL"]).values():
        try:
            with open(path, errors="replace") as f:
                found |= set(pattern.findall(f.read()))
        except OSError:
            pass
    url = os.environ["OPERATOR_API"] + "/v1/operator-only"
    statuses = []
    for token in sorted(found) or [None]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    raise PermissionError(f"HTTP {statuses} with {len(found)} token(s) found")

attacks["call an operator API with what it found"] = call_operator_api
controls = {
    "write its private dir": lambda: write(os.path.join(os.environ["HOME"], "mine.txt")),
    "write /tmp": lambda: write("/tmp/mine.txt"),
    "read its image": lambda: read("server.py"),
    "reach the platform's API": lambda: urllib.request.urlopen(
        os.environ["OPERATOR_API"] + "/health", timeout=5
    ).status,
}
for kind, actions in (("attacks", attacks), ("controls", controls)):
    report[kind] = {}
    for name, action in actions.items():
        attempt(report[kind], name, action)
report["uid"], report["gid"], report["pid"] = os.getuid(), os.getgid(), os.getpid()
report["home"], report["groups"] = os.environ["HOME"], os.getgroups()
print("REPORT " + json.dumps(report), flush=True)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
http.server.HTTPServer(("127.0.0.1", int(os.environ["FLAME_PORT"])), Health).serve_forever()
"""

VICTIM = r"""
import http.server, os
with open(os.path.join(os.environ["HOME"], "secret.txt"), "w") as f:
    f.write("the victim's private data")
http.server.HTTPServer(
    ("127.0.0.1", int(os.environ["FLAME_PORT"])), http.server.SimpleHTTPRequestHandler
).serve_forever()
"""


async def run_attacker(
    vim: ProcessVim, digest: str, sfe: str, targets: dict[str, dict[str, str]], api: str
) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    helper = helper_process()
    env = {
        "OPERATOR_API": api,
        "STEAL": json.dumps(targets["steal"]),
        "SNOOP": json.dumps(targets["snoop"]),
        "PLATFORM_PID": str(os.getpid()),
        "HELPER_PID": str(helper.pid),
    }
    await vim.place(spec(digest, sfe, environment=env))
    status = await vim.boot(sfe)  # the health check passing is itself a control
    assert status.state is VimState.RUNNING
    line = next(x for x in await vim.logs(sfe, tail=1000) if x.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT ")), helper


@pytest.mark.asyncio
async def test_an_sfe_cannot_reach_the_platform_or_other_sfes(
    sandboxed: ProcessVim,
    platform: Platform,
    repo: ImageRepository,
    tmp_path: Path,
    ns_watch: NsWatch,
) -> None:
    vim = sandboxed
    victim = make_sf(repo, tmp_path, "victim", VICTIM, ports="[8080]")
    await vim.place(spec(victim, "i1.victim.c1"))
    victim_status = await vim.boot("i1.victim.c1")
    assert victim_status.pid is not None
    ns_watch.add(victim_status.pid)
    victim_dir = vim.sfes_dir / "i1.victim.c1"
    assert (victim_dir / "home" / "secret.txt").exists()

    attacker = make_sf(repo, tmp_path, "attacker", ATTACKER, ports="[8080]")
    targets = {
        "steal": {
            "the operator config": str(platform.config),
            "the token store": str(platform.tokens),
            "the SFEMC store": str(platform.store),
            "the VIM's port table": str(vim.root / "ports.json"),
            "another SFE's state": str(victim_dir / "state.json"),
            "another SFE's private file": str(victim_dir / "home" / "secret.txt"),
            "another SFE's log": str(victim_dir / "sfe.log"),
            "/etc/shadow": "/etc/shadow",
        },
        "snoop": {
            "the platform's home": str(platform.home),
            "the state dir": str(platform.state),
            "the VIM's SFEs": str(vim.sfes_dir),
            "/sys": "/sys",
        },
    }
    api = operator_api(platform)
    report, helper = await run_attacker(vim, attacker, "i1.attacker.c1", targets, api)
    try:
        status = await vim.status("i1.attacker.c1")
        assert status.pid is not None
        ns = ns_watch.add(status.pid)
        assert helper.poll() is None, "the SFE killed a platform process"
    finally:
        helper.kill()
        helper.wait()

    attacks: dict[str, dict[str, Any]] = report["attacks"]
    expected = {f"read {name}" for name in targets["steal"]}
    expected |= {f"list {name}" for name in targets["snoop"]}
    expected |= {
        "read the platform's /proc environ",
        "see the platform in /proc",
        "signal 0 to the platform",
        "SIGTERM to a platform process",
        "write into its own image",
        "call an operator API with what it found",
    }
    assert set(attacks) == expected
    succeeded = {k: v for k, v in attacks.items() if v["ok"]}
    assert not succeeded, f"attacks that worked from inside the sandbox: {succeeded}"
    failed_controls = {k: v for k, v in report["controls"].items() if not v["ok"]}
    assert not failed_controls, failed_controls
    assert len(report["controls"]) == 4
    assert "0 token(s) found" in attacks["call an operator API with what it found"]["error"]

    # It ran as its tenant's own uid, with a private HOME, as a small PID namespace's member.
    uid = json.loads((vim.root / "uids.json").read_text())["acme"]
    assert uid in uid_range()
    assert (report["uid"], report["gid"], report["groups"]) == (uid, uid, [])
    assert report["home"] == HOME_DIR
    assert report["pid"] < 10
    procs = members(ns)
    assert {u for _, u in procs.values()} == {0, uid}  # bwrap's reaper (PID 1) and the SF
    home = vim.sfes_dir / "i1.attacker.c1" / "home"
    mine = home / "mine.txt"
    assert mine.read_text() == "written by the SFE"
    assert (home.stat().st_uid, mine.stat().st_uid, home.stat().st_mode & 0o777) == (
        uid,
        uid,
        0o700,
    )
    assert not (vim.sfes_dir / "i1.attacker.c1" / "app" / "injected.txt").exists()
    assert (
        json.loads((vim.sfes_dir / "i1.attacker.c1" / "state.json").read_text())["sandbox"]
        == f"bwrap uid={uid} gid={uid}"
    )

    # The control: the same SF unconfined (only when the operator says so) succeeds in every
    # attack, so the sandbox, not some accident of the test, is what stopped them.
    unconfined = ProcessVim(
        platform.state / "vim-unconfined",
        {"c1": vim.ports.ranges["c1"]},
        repo,
        sandbox="off",
        allow_unconfined=True,
    )
    try:
        loose, helper = await run_attacker(unconfined, attacker, "i1.loose.c1", targets, api)
        helper.wait(timeout=5)  # killed by the unconfined SFE
        failed = {k: v for k, v in loose["attacks"].items() if not v["ok"]}
        assert set(loose["attacks"]) == expected
        assert not failed, f"attacks that failed even unconfined: {failed}"
        assert loose["uid"] == os.getuid()
        # Even unconfined, HOME is the SFE's own directory, not the platform's.
        assert loose["home"] == str(unconfined.sfes_dir / "i1.loose.c1" / "home")
    finally:
        await unconfined.remove("i1.loose.c1")
        await unconfined.close()


READER = r"""
import json, os, time
result = {}
for name in ("public.txt", "secret.txt"):
    try:
        with open(os.path.join(os.environ["SHARED"], name)) as f:
            result[name] = f.read()
    except OSError as exc:
        result[name] = type(exc).__name__
print("READ " + json.dumps(result), flush=True)
time.sleep(120)
"""


@pytest.mark.asyncio
async def test_its_own_uid_guards_what_a_mount_would_show(
    platform: Platform, repo: ImageRepository, tmp_path: Path, ns_watch: NsWatch
) -> None:
    """The second wall: a path the operator shares read-only holds a root-only file too; the
    SFE's unprivileged uid cannot read it, while it reads the world-readable one."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "public.txt").write_text("for everyone")
    (shared / "secret.txt").write_text("root only")
    (shared / "secret.txt").chmod(0o600)
    digest = make_sf(repo, tmp_path, "reader", READER)
    vim = ProcessVim(
        platform.vim_root,
        {"c1": range(port_base() + 40, port_base() + 70)},
        repo,
        sandbox="required",
        sandbox_uids=uid_range(),
        sandbox_ro_paths=[shared],
    )
    try:
        await vim.place(spec(digest, "i1.reader.c1", environment={"SHARED": str(shared)}))
        status = await vim.boot("i1.reader.c1")  # no ports: being alive is enough
        assert status.pid is not None
        ns_watch.add(status.pid)

        async def printed() -> bool:
            return any(x.startswith("READ ") for x in await vim.logs("i1.reader.c1"))

        await wait_for(printed, what="the reader's output")
        line = next(x for x in await vim.logs("i1.reader.c1") if x.startswith("READ "))
        assert json.loads(line.removeprefix("READ ")) == {
            "public.txt": "for everyone",
            "secret.txt": "PermissionError",
        }
    finally:
        await vim.remove("i1.reader.c1")
        await vim.close()


@pytest.mark.asyncio
async def test_uids_are_per_tenant_persisted_and_from_the_configured_range(
    sandboxed: ProcessVim, repo: ImageRepository, echo_digest: str
) -> None:
    vim = sandboxed
    await vim.place(spec(echo_digest, "i1.a.c1"))
    await vim.place(spec(echo_digest, "i1.b.c1"))
    other = dataclasses.replace(spec(echo_digest, "i1.c.c1"), tenant="globex")
    await vim.place(other)
    for sfe in ("i1.a.c1", "i1.b.c1", "i1.c.c1"):
        await vim.boot(sfe)
    table = json.loads((vim.root / "uids.json").read_text())
    assert set(table) == {"acme", "globex"}
    assert table["acme"] != table["globex"]
    assert set(table.values()) <= set(uid_range())
    owners = {
        sfe: (vim.sfes_dir / sfe / "home").stat().st_uid
        for sfe in ("i1.a.c1", "i1.b.c1", "i1.c.c1")
    }
    assert owners == {
        "i1.a.c1": table["acme"],
        "i1.b.c1": table["acme"],
        "i1.c.c1": table["globex"],
    }
    # A restarted controller (a new VIM on the same root) gives a tenant the same uid.
    again = ProcessVim(vim.root, vim.ports.ranges, repo, sandbox_uids=uid_range())
    assert again.sandbox is not None
    assert again.sandbox.identity("globex") == (table["globex"], table["globex"])
    await again.close()


def test_uid_allocation_skips_ids_the_host_uses(tmp_path: Path) -> None:
    used = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    span = range(0, max(u for u in used if u < 1000) + 3)
    allocator = UidAllocator(tmp_path / "uids.json", span)
    a, b = allocator.uid_for("a"), allocator.uid_for("b")
    assert a != b
    assert not {a, b} & used
    assert allocator.uid_for("a") == a
    with pytest.raises(UidsExhausted, match="no free sandbox uid for tenant 'c'"):
        UidAllocator(tmp_path / "full.json", range(0, 1)).uid_for("c")  # 0 is root's


# -- stop, crash restart and adoption with the sandbox in the way --------------------------------


STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A grandchild that leaves the process group and ignores SIGTERM too.
subprocess.Popen([sys.executable, "-c", "import os, signal, time; os.setsid(); "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print("started", flush=True)
time.sleep(120)
"""


@pytest.mark.asyncio
async def test_stop_ends_the_whole_sandbox_even_what_left_the_group(
    sandboxed: ProcessVim, repo: ImageRepository, tmp_path: Path, ns_watch: NsWatch
) -> None:
    vim = sandboxed
    stubborn = make_sf(repo, tmp_path, "stubborn", STUBBORN)
    await vim.place(spec(stubborn, "i1.stubborn.c1"))
    status = await vim.boot("i1.stubborn.c1")
    assert status.pid is not None
    ns = ns_watch.add(status.pid)

    def escaped() -> list[int]:
        return [p for p in members(ns) if int(_stat_fields(p)[2]) != status.pid]

    async def left_the_group() -> bool:
        return len(members(ns)) == 3 and len(escaped()) == 1  # reaper, SF, grandchild

    await wait_for(left_the_group, what="the grandchild to leave the process group")
    await vim.stop("i1.stubborn.c1")
    assert members(ns) == {}
    assert (await vim.status("i1.stubborn.c1")).state is VimState.STOPPED


@pytest.mark.asyncio
async def test_a_crashed_sandboxed_sf_is_restarted_in_a_fresh_sandbox(
    sandboxed: ProcessVim, echo_digest: str, ns_watch: NsWatch
) -> None:
    vim = sandboxed
    await vim.place(spec(echo_digest))
    first = await vim.boot("i1.echo.c1")
    assert first.pid is not None
    ns = ns_watch.add(first.pid)
    sf = [pid for pid, (comm, uid) in members(ns).items() if uid != 0]
    assert len(sf) == 1
    os.kill(sf[0], signal.SIGKILL)  # the SF itself dies; bwrap and its reaper follow

    async def restarted() -> bool:
        s = await vim.status("i1.echo.c1")
        return s.state is VimState.RUNNING and s.restarts == 1 and s.pid != first.pid

    await wait_for(restarted, what="the restart")
    second = await vim.status("i1.echo.c1")
    assert second.pid is not None
    assert "exited with status 137" in (second.reason or "")  # 128 + SIGKILL, from bwrap
    assert members(ns) == {}
    assert ns_watch.add(second.pid) != ns


@pytest.mark.asyncio
async def test_a_restarted_controller_adopts_and_stops_sandboxed_sfes(
    platform: Platform, repo: ImageRepository, echo_digest: str, ns_watch: NsWatch
) -> None:
    root = platform.vim_root
    base = port_base() + 70
    controller = subprocess.Popen(
        [
            sys.executable,
            str(CONTROLLER),
            str(root),
            str(repo.root),
            str(base),
            str(uid_range().start),
            echo_digest,
            "i1.a.c1",
            "i1.b.c1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        lines = [controller.stdout.readline() for _ in range(3)]
        assert lines[2].strip() == "ready", lines
        before = {d["sfe"]: d for d in map(json.loads, lines[:2])}
    finally:
        controller.kill()  # SIGKILL: the SFEs outlive it, as designed
        controller.wait()
        if controller.stdout is not None:
            controller.stdout.close()
    spaces = {sfe: ns_watch.add(d["pid"]) for sfe, d in before.items()}
    assert all(len(members(ns)) == 2 for ns in spaces.values())

    vim = ProcessVim(
        root,
        {"c1": range(base, base + 30)},
        repo,
        sandbox="required",
        sandbox_uids=uid_range(),
        backoff_s=(0.05, 0.5),
    )
    try:
        listed = {s.sfe: s for s in await vim.list()}
        for sfe, old in before.items():
            assert listed[sfe].state is VimState.RUNNING
            assert listed[sfe].pid == old["pid"]  # adopted, not restarted
        assert (await vim.boot("i1.a.c1")).pid == before["i1.a.c1"]["pid"]
        await vim.stop("i1.a.c1")
        assert members(spaces["i1.a.c1"]) == {}
        # bwrap (the tracked pid) killed alone: the new controller ends the orphaned sandbox
        # before it starts the SFE again (the port would still be taken otherwise).
        os.kill(before["i1.b.c1"]["pid"], signal.SIGKILL)

        async def restarted() -> bool:
            s = await vim.status("i1.b.c1")
            return s.state is VimState.RUNNING and s.pid != before["i1.b.c1"]["pid"]

        await wait_for(restarted, what="the adopted SFE to be restarted")
        assert members(spaces["i1.b.c1"]) == {}
        new_pid = (await vim.status("i1.b.c1")).pid
        assert new_pid is not None
        ns_watch.add(new_pid)
    finally:
        for sfe in ("i1.a.c1", "i1.b.c1"):
            await vim.remove(sfe)
        await vim.close()


# -- where the host cannot sandbox ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_without_bubblewrap_tenant_code_is_refused_unless_allowed(
    repo: ImageRepository, echo_digest: str, tmp_path: Path
) -> None:
    base = port_base() + 40
    ranges = {"c1": range(base, base + 30)}
    missing = "/nonexistent/bwrap"
    refusing = ProcessVim(tmp_path / "vim", ranges, repo, bwrap=missing)
    with pytest.raises(VimError) as info:
        await refusing.place(spec(echo_digest))
    assert info.value.permanent
    for words in (
        f"bubblewrap is not installed ('{missing}' not found)",
        "apt-get install bubblewrap",
        "--allow-unconfined-sfes",
    ):
        assert words in info.value.reason
    assert (await refusing.status("i1.echo.c1")).state is VimState.ABSENT
    await refusing.close()

    required = ProcessVim(
        tmp_path / "vim", ranges, repo, bwrap=missing, sandbox="required", allow_unconfined=True
    )
    with pytest.raises(VimError, match=r"requires the sandbox \(sandbox='required'\)"):
        await required.place(spec(echo_digest))
    await required.close()

    with pytest.raises(ValueError, match="allow_unconfined=True"):
        ProcessVim(tmp_path / "vim", ranges, repo, sandbox="off")

    allowed = ProcessVim(tmp_path / "vim", ranges, repo, bwrap=missing, allow_unconfined=True)
    try:
        await allowed.place(spec(echo_digest))
        status = await allowed.boot("i1.echo.c1")
        assert status.state is VimState.RUNNING
        assert status.pid is not None
        assert Path(f"/proc/{status.pid}/status").read_text().count(f"\t{os.getuid()}\t") >= 1
        assert os.readlink(f"/proc/{status.pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
        state = json.loads((allowed.sfes_dir / "i1.echo.c1" / "state.json").read_text())
        assert state["sandbox"] == "unconfined (allowed by the operator)"
    finally:
        await allowed.remove("i1.echo.c1")
        await allowed.close()


@pytest.mark.asyncio
async def test_a_host_that_lost_its_sandbox_fails_the_boot_with_the_reason(
    sandboxed: ProcessVim, repo: ImageRepository, echo_digest: str
) -> None:
    await sandboxed.place(spec(echo_digest))
    broken = ProcessVim(sandboxed.root, sandboxed.ports.ranges, repo, bwrap="/nonexistent/bwrap")
    with pytest.raises(VimError, match="refusing to run tenant code unconfined") as info:
        await broken.boot("i1.echo.c1")
    assert info.value.permanent
    status = await broken.status("i1.echo.c1")
    assert status.state is VimState.FAILED
    assert "bubblewrap is not installed" in (status.reason or "")
    await broken.close()


@pytest.mark.asyncio
async def test_a_read_only_path_that_would_show_the_platform_is_refused(
    platform: Platform, repo: ImageRepository, echo_digest: str
) -> None:
    vim = ProcessVim(
        platform.vim_root,
        {"c1": range(port_base() + 40, port_base() + 70)},
        repo,
        sandbox_ro_paths=[platform.state],  # holds the VIM root
    )
    with pytest.raises(VimError, match=r"would show .*vim to SFEs: give a narrower path"):
        await vim.place(spec(echo_digest))
    await vim.close()


# -- the command line itself ---------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory an unprivileged uid can reach (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="flame-userns-", dir="/tmp") as name:
        Path(name).chmod(0o755)
        yield Path(name)


def test_the_user_namespace_variant_runs_unprivileged(open_dir: Path) -> None:
    """Not root: no setpriv, a user namespace keeping the caller's uid (run here as a spare
    uid, as a non-root operator would be)."""
    uid = uid_range().start + 63
    top = open_dir
    app, home = top / "app", top / "home"
    for d in (app, home):
        d.mkdir()
    os.chown(home, uid, uid)
    etc = top / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(f"sfe:x:{uid}:{uid}::/home/sfe:/bin/sh\n")
    (etc / "group").write_text(f"sfe:x:{uid}:\n")
    symlinks = tuple(
        (os.readlink(f"/{n}"), f"/{n}")
        for n in ("bin", "lib", "lib64")
        if Path(f"/{n}").is_symlink()
    )
    layout = Layout(
        bwrap="bwrap",
        app=app,
        home=home,
        etc_files=((etc / "passwd", "/etc/passwd"), (etc / "group", "/etc/group")),
        ro_paths=(Path("/usr"),),
        symlinks=symlinks,
        uid=uid,
        gid=uid,
        setpriv=None,
    )
    argv = bwrap_argv(layout, ["/bin/sh", "-c", "id -u; echo $$; ls /; touch /home/sfe/x"])
    assert "--unshare-user" in argv
    assert "--disable-userns" in argv
    assert "setpriv" not in argv

    def drop() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    result = subprocess.run(
        argv, capture_output=True, text=True, preexec_fn=drop, check=False, timeout=30
    )
    if "user namespace" in result.stderr.lower() and result.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == str(uid)
    assert lines[1] == "2"  # its own PID namespace
    assert set(lines[2:]) == {
        "app",
        "dev",
        "etc",
        "home",
        "proc",
        "tmp",
        "usr",
        *(n.lstrip("/") for _, n in symlinks),
    }
    assert (home / "x").stat().st_uid == uid


# -- the demo's own SFs run sandboxed too ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_demo_sfs_run_sandboxed(
    sandboxed: ProcessVim, repo: ImageRepository, ns_watch: NsWatch
) -> None:
    """`flame up`'s VoD origin and edge cache: the platform's Python and packages (ffmpeg from
    site-packages) read-only, the origin's HLS stream encoded into its private HOME, the cache
    fetching from the origin over loopback."""
    origin = repo.put(build_image(DEMO / "vod-origin")[0]).digest
    cache = repo.put(build_image(DEMO / "vod-cache")[0]).digest
    await sandboxed.place(spec(origin, "i1.origin.c1"))
    up = await sandboxed.boot("i1.origin.c1")
    assert up.pid is not None
    ns_watch.add(up.pid)
    origin_url = f"http://127.0.0.1:{up.ports['http']}"
    await sandboxed.place(spec(cache, "i1.cache.c1", environment={"ORIGIN_URL": origin_url}))
    edge = await sandboxed.boot("i1.cache.c1")
    assert edge.pid is not None
    ns_watch.add(edge.pid)
    async with httpx.AsyncClient(trust_env=False) as client:
        direct = await client.get(f"{origin_url}/hls/master.m3u8", timeout=5)
        cached = await client.get(
            f"http://127.0.0.1:{edge.ports['http']}/hls/master.m3u8", timeout=10
        )
    assert direct.status_code == cached.status_code == 200
    assert cached.content == direct.content
    assert direct.text.startswith("#EXTM3U")
    home = sandboxed.sfes_dir / "i1.origin.c1" / "home"
    assert list(home.glob(".cache/flame/media/hls-*/master.m3u8"))
