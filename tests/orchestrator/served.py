"""Real `flame serve pce` and `flame serve orchestrator` processes for the crash and CLI tests.

Every process started here is stopped by `ServedPlatform.close()`; SFE processes found running
under the test's state directory afterwards are killed and reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image
from ranges import sfe_port_base

from .harness import ROOT

FLAME = [sys.executable, "-m", "flame"]
TOPOLOGY = Path(__file__).parent / "data" / "two-clusters.yaml"


def sfe_processes(root: Path) -> dict[int, str]:
    """pid -> SFE directory name of every live process whose cwd is under `root`."""
    found: dict[int, str] = {}
    prefix = str(root.resolve()) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.startswith(prefix) and "/sfes/" in cwd:
            found[int(entry)] = cwd.split("/sfes/", 1)[1].split("/", 1)[0]
    return found


@dataclass
class ServedPlatform:
    tmp: Path
    operator: str
    acme: str
    pce_url: str
    api_url: str
    port_base: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def _start(
        self,
        name: str,
        args: list[str],
        health: str,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*FLAME, *args],
            env=env or self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs[name] = proc
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited: {(self.tmp / f'{name}.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(health, timeout=1, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not answer {health} in 30 s")

    def start_pce(self, *extra: str) -> None:
        port = int(self.pce_url.rsplit(":", 1)[1])
        self._start(
            "pce",
            ["serve", "pce", "--topology", str(TOPOLOGY), "--port", str(port), *extra],
            self.pce_url + "/health",
        )

    def start_orchestrator(self) -> None:
        port = int(self.api_url.rsplit(":", 1)[1])
        self._start(
            "orchestrator",
            [
                "serve",
                "orchestrator",
                "--topology",
                str(TOPOLOGY),
                "--port",
                str(port),
                "--pce",
                self.pce_url,
                "--drain",
                "0",
                "--resync",
                "1",
                "--port-base",
                str(self.port_base),
                "--no-clmc",
            ],
            self.api_url + "/health",
        )

    def kill_orchestrator(self) -> None:
        proc = self.procs.pop("orchestrator")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> list[int]:
        """Stop the servers; kill and return any SFE process still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        left = sfe_processes(self.tmp)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        return sorted(left)


def served_platform(tmp: Path) -> ServedPlatform:
    state = tmp / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    acme = tokens.issue("acme", Role.TENANT, "acme")
    repo = ImageRepository(state / "images")
    repo.put(build_image(ROOT / "examples" / "sf" / "echo")[0], tags=["1.0"])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(tmp / "config.toml"),
        "FLAME_STATE_DIR": str(state),
        "FLAME_TOKEN": operator,
        "FLAME_LOG_LEVEL": "INFO",
        "FLAME_DEBUG": "1",
    }
    (tmp / "config.toml").write_text("# empty: the FLAME_* variables configure the servers\n")
    base = sfe_port_base()  # the orchestrator's --port-base (tests/ranges.py)
    return ServedPlatform(
        tmp,
        operator,
        acme,
        f"http://127.0.0.1:{free_port()}",
        f"http://127.0.0.1:{free_port()}",
        base,
        env,
    )
