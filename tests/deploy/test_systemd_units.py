"""deploy/systemd (issue 13, item 6): the units are valid for systemd, name real `flame serve`
options, keep secrets out of themselves, and their own command lines start real components
whose readiness checks pass.

systemd is not PID 1 here (no unit was ever started by systemd itself): `systemd-analyze
verify` and `security --offline` read the files; the command lines are run by the test, with
the specifiers and variables expanded as systemd would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ._cli import DEPLOY, check_argv, flame_exe
from ._units import (
    Unit,
    command,
    one,
    parse_env_file,
    parse_unit,
    unit_environment,
    values,
    variables,
)

SYSTEMD = DEPLOY / "systemd"
INSTALLED_FLAME = "/opt/flame/venv/bin/flame"
# unit file -> (`flame serve` component, instance used to check it)
UNITS = {
    "flame-pce.service": ("pce", None),
    "flame-clmc.service": ("clmc", None),
    "flame-orchestrator.service": ("orchestrator", None),
    "flame-dashboard.service": ("dashboard", None),
    "flame-sr@.service": ("sr", "sr-edge"),
    "flame-vim@.service": ("vim", "edge"),
}
CONTROL = [u for u in UNITS if u != "flame-vim@.service"]
ENV = parse_env_file(SYSTEMD / "flame.env")
SPEC = {"d": "/run/credentials/u", "S": "/var/lib", "H": "host1", "i": "edge"}


def unit(name: str) -> Unit:
    return parse_unit(SYSTEMD / name)


def instance_name(name: str) -> str:
    inst = UNITS[name][1]
    return name.replace("@.", f"@{inst}.") if inst else name


def test_the_deployment_directory_has_every_component() -> None:
    shipped = {p.name for p in SYSTEMD.glob("*.service")}
    assert shipped == set(UNITS)
    assert {c for c, _ in UNITS.values()} == {
        "pce",
        "sr",
        "clmc",
        "orchestrator",
        "dashboard",
        "vim",
    }


# -- systemd's own checks ---------------------------------------------------------------------


def _copy_for_systemd(tmp: Path) -> list[Path]:
    """The units with the installed path of `flame` pointed at this venv's (systemd-analyze
    checks the executable exists), instantiated for the templates."""
    paths = []
    for name in [*UNITS, "flame.target"]:
        text = (SYSTEMD / name).read_text().replace(INSTALLED_FLAME, flame_exe())
        target = tmp / (instance_name(name) if name in UNITS else name)
        target.write_text(text)
        paths.append(target)
    return paths


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=paths[0].parent,
    )


@needs_analyze
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(_copy_for_systemd(tmp_path))
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and bad values too: it only warns, so no output at all
    assert result.stdout + result.stderr == ""


@needs_analyze
def test_verify_is_a_real_check(tmp_path: Path) -> None:
    """The check above would catch a mistyped key or a bad value."""
    (path,) = [p for p in _copy_for_systemd(tmp_path) if p.name == "flame-pce.service"]
    text = path.read_text()
    path.write_text(text.replace("Restart=on-failure", "Restart=sometimes\nNoNewPrivilege=yes"))
    out = _verify([path]).stderr
    assert "restart specifier" in out
    assert "NoNewPrivilege" in out


@needs_analyze
def test_hardening_exposure_scores(tmp_path: Path) -> None:
    """systemd's own exposure score (0 best .. 10 worst): the control plane well confined,
    the VIM agent (root, namespaces for the sandbox) less so."""
    scores = {}
    for path in _copy_for_systemd(tmp_path)[:-1]:
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        ).stdout
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert m is not None, out[-500:]
        scores[path.name] = float(m.group(1))
    for name, score in scores.items():
        limit = 5.0 if name.startswith("flame-vim@") else 2.0
        assert score <= limit, scores


# -- the command lines ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNITS))
def test_exec_start_is_a_real_flame_serve_command(name: str) -> None:
    component, inst = UNITS[name]
    u = unit(name)
    line = one(u, "Service", "ExecStart")
    env = {**unit_environment(u, {**SPEC, "i": inst or ""}), **ENV}
    argv = command(line, env, {**SPEC, "i": inst or ""})
    assert argv[:3] == [INSTALLED_FLAME, "serve", component], argv
    assert check_argv(component, argv[3:]) == []
    # every variable it uses is set by the environment file or the unit
    assert variables(line) <= set(env), variables(line) - set(env)
    # the extra options an operator adds in flame.env are real ones too
    extra = f"FLAME_{component.upper()}_ARGS"
    assert f"${extra}" in line.split()
    assert check_argv(component, ENV[extra].split()) == []


def _health_help() -> dict[str, bool]:
    out = subprocess.run(
        [flame_exe(), "health", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {m: True for m in re.findall(r"^\s+(--[a-z-]+)", out, re.MULTILINE)}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_readiness_polls_the_component_it_starts(name: str) -> None:
    """Type=exec (the components send no sd_notify) plus `flame health` on the address and
    port the ExecStart listens on."""
    u = unit(name)
    assert one(u, "Service", "Type") == "exec"
    start = one(u, "Service", "ExecStart").split()
    post = one(u, "Service", "ExecStartPost").split()
    assert post[:2] == [INSTALLED_FLAME, "health"]
    url = post[2]
    host = start[start.index("--host") + 1]
    port = start[start.index("--port") + 1]
    assert re.fullmatch(rf"https?://{re.escape(host)}:{re.escape(port)}/\S*", url), (url, host)
    # https exactly where the component serves TLS
    assert url.startswith("https://") == ("--tls-cert" in start)
    known = _health_help()
    assert all(w in known for w in post[3:] if w.startswith("--"))
    assert "--wait" in post


@pytest.mark.parametrize("name", sorted(UNITS))
def test_restart_and_credentials(name: str) -> None:
    u = unit(name)
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Unit", "StartLimitBurst")
    creds = {v.split(":", 1)[0]: v.split(":", 1)[1] for v in values(u, "Service", "LoadCredential")}
    start = one(u, "Service", "ExecStart")
    if "--tls-cert" in start:
        assert "--tls-cert %d/tls.crt --tls-key %d/tls.key" in start
        assert {"tls.crt", "tls.key"} <= set(creds)
    if "config.toml" in creds:  # the component's token, as its config file
        assert "FLAME_CONFIG=%d/config.toml" in " ".join(values(u, "Service", "Environment"))
    assert all(path.startswith("/etc/flame/") for path in creds.values())


def test_no_secret_is_in_a_unit_or_the_environment_file() -> None:
    for path in [*SYSTEMD.glob("*.service"), SYSTEMD / "flame.env"]:
        text = path.read_text()
        assert not re.search(r"flm_[A-Za-z0-9_-]{8,}", text), path  # a real token
        assert not re.search(r"(?im)^\s*[A-Z_]*(TOKEN|PASSWORD|SECRET)[A-Z_]*\s*=", text), path
        assert not re.search(r"postgresql://[^@\s/]*:[^@\s]*@", text), path  # no password in a URL


@pytest.mark.parametrize("name", CONTROL)
def test_control_plane_hardening(name: str) -> None:
    u = unit(name)
    service = dict(u["Service"])  # the last value of each key
    assert service["User"] == "flame"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "flame",
        "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }.items():
        assert service.get(key) == value, (name, key)
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_vim_agent_unit() -> None:
    u = unit("flame-vim@.service")
    service = dict(u["Service"])
    assert service["User"] == "root"
    assert service["KillMode"] == "process"  # SFEs outlive the agent, which adopts them
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert "CAP_NET_ADMIN" not in caps
    assert "CAP_SYS_PTRACE" not in caps
    assert "--root %S/flame-vim/%i" in service["ExecStart"]


# -- what the VIM agent's capabilities are: the sandbox run under exactly that set -----------

_PROBE = """
import sys, tempfile
from pathlib import Path
from flame.sfemc.vim.sandbox import Sandbox
print(Sandbox(Path(tempfile.mkdtemp(dir=sys.argv[1])), python=sys.executable).problem())
"""


def _probe_with_bounding_set(caps: set[str], tmp: Path) -> str:
    wanted = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps))])
    return subprocess.run(
        [
            "setpriv",
            f"--bounding-set={wanted}",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            _PROBE,
            str(tmp),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("bwrap") and shutil.which("setpriv")),
    reason="needs root, bubblewrap and setpriv (the agent's privileged sandbox)",
)
def test_vim_capability_bounding_set_is_enough_for_the_sandbox(tmp_path: Path) -> None:
    """The sandbox's own start-up check (a real bwrap + setpriv run to a tenant uid) passes
    under the unit's CapabilityBoundingSet, and fails without CAP_SYS_ADMIN: so the set is
    neither guessed too small nor missing what matters."""
    caps = set(one(unit("flame-vim@.service"), "Service", "CapabilityBoundingSet").split())
    assert _probe_with_bounding_set(caps, tmp_path) == "None"
    refused = _probe_with_bounding_set(caps - {"CAP_SYS_ADMIN"}, tmp_path)
    assert "bubblewrap could not start a sandbox" in refused
