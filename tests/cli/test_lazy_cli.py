"""`flame` start-up (issue 18): a command imports only its own module, and the lazily declared
command tree says exactly what the command modules define."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from flame.cli import (
    cert_commands,
    clmc_commands,
    config_commands,
    dashboard_commands,
    health_commands,
    orchestrator_commands,
    sandbox_commands,
    sfemc_commands,
    sfr_commands,
    token_commands,
)
from flame.cli._lazy import Lazy
from flame.cli.main import ROOT_COMMANDS, SERVE_COMMANDS, TOPOLOGY_COMMANDS, cli, main

REPO = Path(__file__).resolve().parents[2]

# What made every `flame` command take ~0.4-1.1 s before any work: HTTP clients, the httpx CLI's
# rich, YAML and the TOSCA package, the PCE store, TLS, asyncio, the servers, the command modules.
HEAVY = (
    "httpx",
    "httpcore",
    "rich",
    "pygments",
    "yaml",
    "pydantic",
    "ssl",
    "asyncio",
    "uvicorn",
    "starlette",
    "cryptography",
    "flame.tosca",
    "flame.topology",
    "flame.sfr",
    "flame.sfemc",
    "flame.orchestrator",
    "flame.clmc",
    "flame.sandbox",
    "flame.common.config",
    "flame.common.auth",
    "flame.common.tls",
    *(f"flame.cli.{m}" for m in ("sfr_commands", "cert_commands", "orchestrator_commands")),
    *(f"flame.cli.{m}" for m in ("sfemc_commands", "sandbox_commands", "config_commands")),
    *(f"flame.cli.{m}" for m in ("health_commands", "clmc_commands", "dashboard_commands")),
    "flame.cli.token_commands",
)


def imported_after(code: str, tmp_path: Path) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (which may call `main`)."""
    loaded = "sorted(k for k, v in sys.modules.items() if v is not None)"  # None: blocked
    script = f"{code}\nimport json, sys\nprint('\\n' + json.dumps({loaded}))"
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "FLAME_CONFIG": str(tmp_path / "config.toml"),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
    }
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy_in(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_importing_the_cli_imports_nothing_heavy(tmp_path: Path) -> None:
    modules = imported_after("import flame.cli.main", tmp_path)
    assert "flame.cli.main" in modules
    assert heavy_in(modules) == set()


def test_help_imports_no_command_module(tmp_path: Path) -> None:
    modules = imported_after(
        "from flame.cli.main import main\nassert main(['--help']) == 0", tmp_path
    )
    assert heavy_in(modules) == set()


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    # `flame token list` reads a file: no HTTP client, no TOSCA, no other command's module.
    modules = imported_after(
        "from flame.cli.main import main\nassert main(['token', 'list']) == 0", tmp_path
    )
    assert heavy_in(modules) == {
        "flame.cli.token_commands",
        "flame.common.auth",
        "flame.common.config",
    }


def test_the_httpx_cli_is_not_imported(tmp_path: Path) -> None:
    # `flame health` needs httpx, not httpx's own command-line client (rich, pygments).
    modules = imported_after(
        "from flame.cli.main import main\n"
        "assert main(['health', '--timeout', '5', 'http://127.0.0.1:9/health']) == 1",
        tmp_path,
    )
    assert "httpx" in modules
    assert not {m for m in modules if m.split(".")[0] in ("rich", "pygments")}


# -- the declared tree is the real one ---------------------------------------------------------


def declared_entries() -> list[tuple[str, Lazy]]:
    tables = {"": ROOT_COMMANDS, "topology ": TOPOLOGY_COMMANDS, "serve ": SERVE_COMMANDS}
    return [
        (f"{prefix}{name}", entry)
        for prefix, table in tables.items()
        for name, entry in table.items()
        if isinstance(entry, Lazy)
    ]


@pytest.mark.parametrize(
    ("path", "entry"), declared_entries(), ids=[path for path, _entry in declared_entries()]
)
def test_declared_help_is_the_commands_own(path: str, entry: Lazy) -> None:
    command = entry.load()
    assert command.name == path.rsplit(maxsplit=1)[-1]
    assert not command.hidden
    assert not command.deprecated
    stand_in = click.Command(command.name, help=entry.help)
    # Every width --help may shorten it to gives the same text as the command's own help.
    for limit in range(10, 200):
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), limit


MODULES_COMMANDS = (
    sfr_commands.COMMANDS,
    orchestrator_commands.COMMANDS,
    sfemc_commands.COMMANDS,
    sandbox_commands.COMMANDS,
    config_commands.COMMANDS,
    health_commands.COMMANDS,
    (cert_commands.cert_group, token_commands.token_group),
)


def test_every_modules_command_is_declared() -> None:
    # A command added to a module's COMMANDS reaches `flame` only once declared in main.py.
    for commands in MODULES_COMMANDS:
        for command in commands:
            assert command.name is not None
            assert cli.commands[command.name] is command, f"declare {command.name} in main.py"
    serve = cli.commands["serve"]
    assert isinstance(serve, click.Group)
    servers = [sfr_commands.serve_pce, sfr_commands.serve_sr, sfemc_commands.serve_vim]
    servers += [orchestrator_commands.serve_orchestrator, clmc_commands.serve_clmc]
    for command in (*servers, dashboard_commands.serve_dashboard):
        assert command.name is not None
        assert serve.commands[command.name] is command


@pytest.mark.parametrize("group", [(), ("serve",), ("topology",)], ids=" ".join)
def test_help_listing_before_and_after_loading_is_the_same(
    group: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh `flame --help` (nothing loaded) prints what it prints with every command loaded."""
    env = {**os.environ, "COLUMNS": "80", "HOME": str(tmp_path)}
    fresh = subprocess.run(
        [sys.executable, "-m", "flame", *group, "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert fresh.returncode == 0, fresh.stderr
    monkeypatch.setenv("COLUMNS", "80")
    for path, _entry in declared_entries():
        name = path.rsplit(maxsplit=1)[-1]
        node: click.Command = cli
        for part in path.split()[:-1]:
            assert isinstance(node, click.Group)
            node = node.commands[part]
        assert isinstance(node, click.Group)
        node.commands[name]  # loads it
    capsys.readouterr()
    assert main([*group, "--help"]) == 0
    assert capsys.readouterr().out == fresh.stdout
    assert "Commands:" in fresh.stdout
