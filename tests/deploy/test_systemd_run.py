"""The units' own command lines start a working platform (issue 13, item 6).

systemd cannot start units here (it is not PID 1), so this test does what it would: for each
unit, the Environment= of the unit, then the environment file (which overrides it, as in
systemd), the specifiers (%d the credentials directory, %S the state root, %i the instance),
the ExecStart= as argv, then the ExecStartPost= readiness check, which must pass. The
environment file is the shipped one with only this machine's addresses, ports and extra
options changed; credentials are files in the %d directory, as LoadCredential= makes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port

from ._cli import flame_exe
from ._units import command, one, parse_env_file, parse_unit, unit_environment, values
from .test_systemd_units import INSTALLED_FLAME, SYSTEMD

TOPOLOGY = """\
flame_topology: 1
name: units
locations:
  here: {latitude: 51.5, longitude: -0.1}
service_routers:
  sr-edge: {location: here, address: 127.0.0.1}
clusters:
  edge: {sr: sr-edge, location: here, address: 127.0.0.1, capacity: {cpus: 2, memory: 2 GB, disk: 5 GB}}
"""


class Host:
    """One machine's /etc/flame, /var/lib and credentials, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.var_lib = root / "var-lib"
        self.etc = root / "etc-flame"
        self.etc.mkdir()
        (self.var_lib / "flame").mkdir(parents=True)
        self.ports = {
            c: free_port() for c in ("PCE", "CLMC", "ORCHESTRATOR", "DASHBOARD", "SR", "VIM")
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        store = TokenStore(self.var_lib / "flame" / "tokens.json")
        self.tokens = {
            "ops": store.issue("ops", Role.OPERATOR),
            "router": store.issue("routers", Role.ROUTER),
        }
        # the agent's host has a copy of the control host's token store (docs/operate.md)
        (self.var_lib / "flame-vim").mkdir()
        shutil.copy(self.var_lib / "flame" / "tokens.json", self.var_lib / "flame-vim")
        (self.etc / "topology.yaml").write_text(TOPOLOGY)
        subprocess.run(
            [flame_exe(), "cert", "issue-server", "127.0.0.1", "--out", str(self.etc / "tls")],
            env={**self.base_env(), "FLAME_STATE_DIR": str(self.var_lib / "flame")},
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.env_file = self._env_file()

    def url(self, component: str) -> str:
        return f"https://127.0.0.1:{self.ports[component]}"

    def base_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH")
        return {k: v for k, v in os.environ.items() if k in keep}

    def _env_file(self) -> dict[str, str]:
        env = parse_env_file(SYSTEMD / "flame.env")
        assert "FLAME_STATE_DIR" not in env  # each unit's own StateDirectory, not overridden
        changed = {
            "FLAME_API_URL": self.url("ORCHESTRATOR"),
            "FLAME_PCE_URL": self.url("PCE"),
            "FLAME_CLMC_URL": self.url("CLMC"),
            "FLAME_CA_FILE": str(self.var_lib / "flame" / "ca" / "ca.crt"),
            "FLAME_LISTEN": "127.0.0.1",
            "FLAME_TOPOLOGY": str(self.etc / "topology.yaml"),
            "FLAME_PCE_DB": str(self.var_lib / "flame" / "pce.sqlite3"),
            "FLAME_CLMC_ARGS": f"--platform-url {self.url('DASHBOARD')}",
            "FLAME_ORCHESTRATOR_ARGS": f"--vim edge={self.url('VIM')}",
            "FLAME_SR_ARGS": "--workers 1",
            "FLAME_VIM_ARGS": f"--images {self.url('ORCHESTRATOR')}",
            **{f"FLAME_{c}_PORT": str(p) for c, p in self.ports.items()},
        }
        assert set(changed) <= set(env), set(changed) - set(env)
        return {**env, **changed}

    def credentials(self, unit_name: str, instance: str) -> Path:
        """%d: each LoadCredential=NAME:PATH as the file NAME (PATH read from here)."""
        creds = self.root / "credentials" / unit_name.replace("@", f"@{instance}")
        creds.mkdir(parents=True)
        for spec in values(parse_unit(SYSTEMD / unit_name), "Service", "LoadCredential"):
            name, _, path = spec.partition(":")
            source = Path(path)
            if source.parent.name == "tls":
                shutil.copy(self.etc / "tls" / source.name, creds / name)
            elif source.name == "pgpass":
                (creds / name).write_text("")  # SQLite: no database password
            else:  # the component's config.toml: its token only
                token = self.tokens["router" if source.stem == "sr" else "ops"]
                (creds / name).write_text(f'token = "{token}"\n')
            (creds / name).chmod(0o400)
        return creds

    def start(self, unit_name: str, instance: str = "") -> list[str]:
        """Start the unit's ExecStart=, then run its ExecStartPost= (must exit 0)."""
        unit = parse_unit(SYSTEMD / unit_name)
        spec = {
            "d": str(self.credentials(unit_name, instance)),
            "S": str(self.var_lib),
            "H": "host-under-test",
            "i": instance,
        }
        env = {**unit_environment(unit, spec), **self.env_file}  # the file overrides, as in systemd
        for directory in values(unit, "Service", "StateDirectory"):
            (self.var_lib / directory).mkdir(exist_ok=True)
        start = command(one(unit, "Service", "ExecStart"), env, spec)
        post = command(one(unit, "Service", "ExecStartPost"), env, spec)
        assert start[0] == post[0] == INSTALLED_FLAME
        run_env = {**self.base_env(), **env}
        with (self.root / f"{unit_name}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [flame_exe(), *start[1:]],
                    env=run_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        ready = subprocess.run(
            [flame_exe(), *post[1:]],
            check=False,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ready.returncode == 0, (
            unit_name,
            ready.stderr,
            (self.root / f"{unit_name}.log").read_text()[-3000:],
        )
        return start

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.stop()


def test_units_command_lines_start_a_platform_whose_readiness_checks_pass(host: Host) -> None:
    """Every unit, as systemd would run it; then the pieces are seen working together."""
    host.start("flame-pce.service")
    host.start("flame-clmc.service")
    vim = host.start("flame-vim@.service", "edge")
    host.start("flame-orchestrator.service")
    host.start("flame-sr@.service", "sr-edge")
    host.start("flame-dashboard.service")

    verify = ssl.create_default_context(cafile=host.var_lib / "flame" / "ca" / "ca.crt")
    ops = {"Authorization": f"Bearer {host.tokens['ops']}"}
    with httpx.Client(verify=verify, timeout=5, trust_env=False) as client:
        # the PCE keeps its state where the unit said, named after the host (%H)
        pce = client.get(host.url("PCE") + "/health").json()
        assert pce["role"] == "active"
        assert pce["holder"] == "host-under-test"
        assert (host.var_lib / "flame" / "pce.sqlite3").exists()
        # the VIM agent under its own state directory (%S/flame-vim/%i), answering the
        # operator's token from that directory's copy of the token store
        assert vim[vim.index("--root") + 1] == str(host.var_lib / "flame-vim" / "edge")
        assert client.get(host.url("VIM") + "/v1/vim", headers=ops).status_code == 200
        # the orchestrator checks tokens against its state directory's store
        who = client.get(host.url("ORCHESTRATOR") + "/v1/whoami", headers=ops)
        assert who.json()["role"] == "operator"
        # the CLMC checks tokens (it is not --no-auth) and answers an operator
        assert (
            client.get(host.url("CLMC") + "/query", params={"q": "SHOW DATABASES"}).status_code
            == 401
        )
        shown = client.get(host.url("CLMC") + "/query", params={"q": "SHOW DATABASES"}, headers=ops)
        assert shown.status_code == 200
    # the SR answers on its data port for `_flame`
    sr = httpx.get(
        f"http://127.0.0.1:{host.ports['SR']}/.flame/health",
        headers={"Host": "_flame"},
        timeout=5,
        trust_env=False,
    )
    assert sr.json()["sr"] == "sr-edge"
    # ready: its table came from the PCE over https, verified with the platform CA
    assert sr.status_code == 200
    assert sr.json()["table_version"] is not None
    assert all(p.poll() is None for p in host.procs)
    # the orchestrator's SFEMC reached the agent the environment file names, with its token
    orchestrator_log = (host.root / "flame-orchestrator.service.log").read_text()
    assert "agent VIM not listed" not in orchestrator_log
    assert "refused this SFEMC's token" not in orchestrator_log
