"""The `flame` command: exit codes 0 ok / 1 user error / 2 internal error, and its output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest

import flame.cli.main as cli_main
from flame import __version__
from flame.cli.main import cli, main
from flame.common.auth import TokenStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "vod-edge-cache" / "service.yaml"
SANDPIT = REPO / "examples" / "topology" / "sandpit.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
DIAGNOSTIC_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<code>[EWT]\d{3}) \S")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config and state in tmp_path, never the developer's; no debug tracebacks."""
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    state = tmp_path / "state"
    monkeypatch.setenv("FLAME_CONFIG", str(config))
    monkeypatch.setenv("FLAME_STATE_DIR", str(state))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for var in ("FLAME_DEBUG", "FLAME_TOKEN", "FLAME_API_URL", "FLAME_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    return state


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def diagnostics_in(text: str) -> list[re.Match[str]]:
    return [m for m in map(DIAGNOSTIC_LINE.match, text.splitlines()) if m]


# -- help and version ---------------------------------------------------------------------------


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def test_all_commands_are_known() -> None:
    # So that the --help test below really covers every command.
    assert set(command_paths()) >= {
        (),
        ("validate",),
        ("topology",),
        ("topology", "check"),
        ("token",),
        ("token", "issue"),
        ("token", "list"),
        ("token", "revoke"),
    }


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "flame")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_on_every_command(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], flag: str
) -> None:
    code, out, err = run(capsys, *path, flag)
    assert code == 0, err
    assert out.startswith(f"Usage: flame {' '.join(path)}".rstrip())
    assert "Options:" in out
    assert err == ""


def test_bare_flame_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code in (0, 1)
    assert "Commands:" in out + err
    assert "validate" in out + err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"flame, version {__version__}"


# -- validate -------------------------------------------------------------------------------------


def test_validate_valid_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(EXAMPLE))
    assert code == 0, err
    assert out.startswith("valid: service function chain 'vod' (instance 'vod-1')")
    assert "2 service function(s)" in out
    assert diagnostics_in(out + err) == []


def test_validate_with_the_sandpit_topology(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "--topology", str(SANDPIT), str(EXAMPLE))
    assert code == 0, err
    assert "valid:" in out


def test_validate_invalid_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_TEXT.replace("edge-bath: {cache: placed}", "edge-bath: {cache: plcaed}")
    text = text.replace("image: vod-origin:1.0", "image: vod-origin:1.0\n        imagee: x")
    bad = write(tmp_path / "bad.yaml", text)
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 1
    found = diagnostics_in(err)
    assert len(found) >= 2, err
    assert {m["file"] for m in found} == {str(bad)}
    lines = text.splitlines()
    for m in found:
        # Every printed position points into the file.
        assert 1 <= int(m["line"]) <= len(lines)
        assert 1 <= int(m["col"]) <= len(lines[int(m["line"]) - 1]) + 1
    plcaed = next(i for i, line in enumerate(lines, 1) if "plcaed" in line)
    imagee = next(i for i, line in enumerate(lines, 1) if "imagee" in line)
    assert (str(plcaed), "E801") in {(m["line"], m["code"]) for m in found}
    assert (str(imagee), "E400") in {(m["line"], m["code"]) for m in found}
    assert "hint: did you mean 'placed'?" in err
    assert "error(s)" in err
    assert "valid:" not in out


def test_validate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "validate", str(EXAMPLE))
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"ok", "errors", "warnings", "diagnostics", "model"}
    assert data["ok"] is True
    assert (data["errors"], data["warnings"], data["diagnostics"]) == (0, 0, [])
    assert data["model"]["sfc"] == "vod"
    assert data["model"]["sfci"] == "vod-1"
    names = [sf["name"] for sf in data["model"]["service_functions"]]
    assert sorted(names) == ["cache", "origin"]


def test_validate_json_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_TEXT.replace("edge-bath: {cache: placed}", "edge-bath: {cache: plcaed}")
    bad = write(tmp_path / "bad.yaml", text)
    code, out, err = run(capsys, "--json", "validate", str(bad))
    assert code == 1
    data = json.loads(out)  # stdout is only the JSON document
    assert data["ok"] is False
    assert data["errors"] >= 1
    assert data["model"] is None
    first = data["diagnostics"][0]
    assert set(first) >= {"code", "severity", "message", "file", "line", "column", "hint"}
    assert any(d["code"] == "E801" and d["file"] == str(bad) for d in data["diagnostics"])
    assert diagnostics_in(err) == []


def _warning_only(tmp_path: Path) -> Path:
    spare = (
        "    spare:\n"
        "      type: eu.ict-flame.nodes.ServiceFunction\n"
        "      properties:\n"
        "        image: spare:1.0\n"
        "        fqdn: spare.vod.flame.example\n"
        "        ports:\n"
        "          - {name: http, port: 8082}\n\n"
        "  policies:"
    )
    return write(tmp_path / "warn.yaml", EXAMPLE_TEXT.replace("  policies:", spare, 1))


def test_warnings_pass_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    warn = _warning_only(tmp_path)
    code, out, err = run(capsys, "validate", str(warn))
    assert code == 0
    assert [m["code"] for m in diagnostics_in(err)] == ["W902"]
    assert "1 warning(s)" in out
    code, _, err = run(capsys, "validate", "--strict", str(warn))
    assert code == 1
    assert [m["code"] for m in diagnostics_in(err)] == ["W902"]
    code, out, _ = run(capsys, "--json", "validate", "--strict", str(warn))
    assert code == 1
    data = json.loads(out)
    assert (data["ok"], data["errors"], data["warnings"]) == (False, 0, 1)


def test_input_overrides_get_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The triggers of the example name the default FQDN; filter them by router only.
    text = EXAMPLE_TEXT.replace(
        "resource_type: {fqdn: vod.flame.example, sr: sr-ue-1}", "resource_type: {sr: sr-ue-1}"
    )
    svc = write(tmp_path / "svc.yaml", text)
    code, out, err = run(
        capsys, "--json", "validate", "--input", "domain=video.example.org", str(svc)
    )
    assert code == 0, out + err
    data = json.loads(out)
    fqdns = {sf["name"]: sf["fqdn"] for sf in data["model"]["service_functions"]}
    assert fqdns == {"origin": "origin.video.example.org", "cache": "video.example.org"}
    # Without --input the default applies.
    code, out, _ = run(capsys, "--json", "validate", str(svc))
    assert code == 0
    fqdns = {sf["name"]: sf["fqdn"] for sf in json.loads(out)["model"]["service_functions"]}
    assert fqdns == {"origin": "origin.vod.flame.example", "cache": "vod.flame.example"}


@pytest.mark.parametrize("pair", ["domain", "=x"])
def test_malformed_input_is_a_user_error(capsys: pytest.CaptureFixture[str], pair: str) -> None:
    code, _, err = run(capsys, "validate", "--input", pair, str(EXAMPLE))
    assert code == 1
    assert "NAME=VALUE" in err


def test_runtime_option(capsys: pytest.CaptureFixture[str]) -> None:
    # The example uses the default 'process' runtime; a platform without it cannot run it.
    code, _, err = run(capsys, "validate", "--runtime", "kubernetes", str(EXAMPLE))
    assert code == 1
    assert "E800" in {m["code"] for m in diagnostics_in(err)}
    code, _, _ = run(capsys, "validate", "--runtime", "process", str(EXAMPLE))
    assert code == 0


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    code, _, err = run(capsys, "validate", str(missing))
    assert code == 1
    assert f"{missing}: E102" in err


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["validate", "--bogus", str(EXAMPLE)],
        ["validate"],
        ["--bogus", "validate", str(EXAMPLE)],
        ["topology", "chekc", str(SANDPIT)],
        ["token", "issue"],
    ],
)
def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == 1
    assert "Error:" in err
    assert "Traceback" not in out + err


def test_usage_error_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "xyzzy")
    assert code == 1
    assert json.loads(out) == {"error": "usage_error", "message": "No such command 'xyzzy'."}


def test_broken_topology_shows_its_diagnostics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SANDPIT.read_text(encoding="utf-8").replace("flame_topology: 1\n", "flame_topology: 2\n")
    text = text.replace("address: 127.0.1.2", "address: 192.0.2.300")
    topo = write(tmp_path / "topo.yaml", text)
    code, out, err = run(capsys, "validate", "--topology", str(topo), str(EXAMPLE))
    assert code == 1
    found = {(m["file"], m["code"]) for m in diagnostics_in(err)}
    assert found == {(str(topo), "T106"), (str(topo), "T104")}
    assert "2 error(s)" in err
    assert "valid:" not in out
    # As JSON: the ValidationFailed body with every diagnostic.
    code, out, _ = run(capsys, "--json", "validate", "--topology", str(topo), str(EXAMPLE))
    assert code == 1
    data = json.loads(out)
    assert data["error"] == "validation_failed"
    assert sorted(d["code"] for d in data["diagnostics"]) == ["T104", "T106"]


def test_topology_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "topology", "check", str(SANDPIT))
    assert code == 0
    assert out.strip() == ("valid topology 'sandpit': 4 service router(s), 3 cluster(s), 6 link(s)")
    code, out, _ = run(capsys, "--json", "topology", "check", str(SANDPIT))
    data = json.loads(out)
    assert data["clusters"] == ["edge-bath", "edge-bristol", "metro-london"]
    assert data["links"] == 6
    broken = write(tmp_path / "t.yaml", "flame_topology: 1\nswitchez: {}\n")
    code, _, err = run(capsys, "topology", "check", str(broken))
    assert code == 1
    assert f"{broken}:2:1: E200" in err
    assert "did you mean 'switches'?" in err


# -- tokens ----------------------------------------------------------------------------------------


def test_token_round_trip(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "token", "issue", "alice", "--operator")
    assert code == 0, err
    token = out.strip()
    assert re.fullmatch(r"flm_[A-Za-z0-9_-]{43}", token)
    assert "cannot be shown again" in err
    code, out, err = run(capsys, "token", "issue", "acme-bot", "--tenant", "acme-media")
    assert code == 0, err
    tenant_token = out.strip()
    assert tenant_token != token

    store = isolated_env / "tokens.json"
    assert store.is_file()
    stored = store.read_text(encoding="utf-8")
    assert token not in stored
    assert tenant_token not in stored
    assert token[4:] not in stored  # not even without its prefix

    code, out, err = run(capsys, "token", "list")
    assert code == 0
    assert token not in out + err
    assert tenant_token not in out + err
    header, *rows = [line.split("\t") for line in out.strip().splitlines()]
    assert header == ["NAME", "ROLE", "TENANT", "ID", "CREATED", "EXPIRES", "LAST USED"]
    assert [r[:3] for r in rows] == [
        ["alice", "operator", "-"],
        ["acme-bot", "tenant", "acme-media"],
    ]
    assert rows[0][3].startswith(token[:12])
    assert [r[5:] for r in rows] == [["never", "never"], ["never", "never"]]

    code, out, _ = run(capsys, "--json", "token", "list")
    listed = json.loads(out)
    assert [(t["name"], t["role"], t["tenant"]) for t in listed] == [
        ("alice", "operator", None),
        ("acme-bot", "tenant", "acme-media"),
    ]
    assert token not in out

    code, out, _ = run(capsys, "token", "revoke", "alice")
    assert code == 0
    assert "revoked 'alice'" in out
    code, out, _ = run(capsys, "token", "list")
    assert "alice" not in out
    assert "acme-bot" in out


def test_token_ttl_expiry_and_last_use(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11 item 5: `flame token issue --ttl`, and `flame token list` shows expiry and use."""
    code, out, err = run(
        capsys, "--json", "token", "issue", "short", "--tenant", "acme", "--ttl", "2h"
    )
    assert code == 0, err
    issued = json.loads(out)
    expires = datetime.fromisoformat(issued["expires"])
    assert (
        timedelta(hours=2) - timedelta(seconds=5)
        < expires - datetime.now(UTC)
        <= timedelta(hours=2)
    )
    TokenStore(isolated_env / "tokens.json").authenticate(issued["token"])
    code, out, _ = run(capsys, "--json", "token", "list")
    (listed,) = json.loads(out)
    assert listed["last_used"] is not None
    assert listed["expired"] is False
    code, out, _ = run(capsys, "token", "list")
    assert "\tnever\t" not in out.splitlines()[1]  # both expiry and last use are known
    for bad in ("0s", "soon", "-1h", "20000d"):
        code, _, err = run(capsys, "token", "issue", f"bad-{bad}", "--tenant", "acme", "--ttl", bad)
        assert code != 0
        assert "--ttl" in err


def test_token_issue_json_shows_the_token_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "token", "issue", "bob", "--tenant", "acme")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "bob"
    assert data["tenant"] == "acme"
    assert data["token"].startswith("flm_")
    _, listed, _ = run(capsys, "--json", "token", "list")
    assert data["token"] not in listed


@pytest.mark.parametrize(
    "args",
    [
        ["token", "issue", "x"],  # neither --operator nor --tenant
        ["token", "issue", "x", "--operator", "--tenant", "acme"],
        ["token", "issue", "x", "--tenant", "Not A Tenant"],
        ["token", "issue", "bad name!", "--operator"],
        ["token", "revoke", "nobody"],
    ],
)
def test_token_user_errors(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == 1
    assert err.startswith("error: ")
    assert "Traceback" not in out + err


def test_duplicate_token_name_and_revoke_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "token", "issue", "carol", "--operator")[0] == 0
    code, _, err = run(capsys, "token", "issue", "carol", "--operator")
    assert code == 1
    assert "already exists" in err
    code, _, err = run(capsys, "token", "revoke", "carlo")
    assert code == 1
    assert "did you mean 'carol'?" in err


def test_config_option_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config", str(tmp_path / "missing.toml"), "token", "list")
    assert code == 1
    assert "missing.toml" in err


# -- internal errors ---------------------------------------------------------------------------------


def _explode(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("boom")


def test_internal_error_exits_2_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_main, "validate", _explode)
    code, out, err = run(capsys, "validate", str(EXAMPLE))
    assert code == 2
    assert "Traceback" not in out + err
    assert "internal error: RuntimeError: boom" in err
    assert "FLAME_DEBUG" in err


def test_internal_error_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_main, "validate", _explode)
    code, out, _ = run(capsys, "--json", "validate", str(EXAMPLE))
    assert code == 2
    assert json.loads(out) == {"error": "internal_error", "message": "boom"}


def test_flame_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_main, "validate", _explode)
    monkeypatch.setenv("FLAME_DEBUG", "1")
    code, _, err = run(capsys, "validate", str(EXAMPLE))
    assert code == 2
    assert "Traceback" in err
    assert "RuntimeError: boom" in err


# -- as a real process ------------------------------------------------------------------------------


def flame_executable() -> str:
    beside = Path(sys.executable).parent / "flame"
    if beside.exists():
        return str(beside)
    found = shutil.which("flame")
    if found is None:
        pytest.skip("the flame console script is not installed")
    return found


def run_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
        "LC_ALL": "C.UTF-8",
    }
    return subprocess.run(
        [flame_executable(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_subprocess_validate_exit_codes(tmp_path: Path) -> None:
    ok = run_process(tmp_path, "validate", "--topology", str(SANDPIT), str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("valid: service function chain 'vod'")
    bad = write(tmp_path / "bad.yaml", EXAMPLE_TEXT.replace("image: edge-cache:1.0\n", ""))
    failed = run_process(tmp_path, "validate", str(bad))
    assert failed.returncode == 1
    found = diagnostics_in(failed.stderr)
    assert found
    assert found[0]["file"] == str(bad)
    assert "\x1b[" not in failed.stderr  # no colours when not on a terminal


def test_subprocess_usage_error_and_json(tmp_path: Path) -> None:
    usage = run_process(tmp_path, "frobnicate")
    assert usage.returncode == 1
    assert "No such command 'frobnicate'" in usage.stderr
    assert "Traceback" not in usage.stderr
    as_json = run_process(tmp_path, "--json", "validate", str(EXAMPLE))
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["model"]["sfc"] == "vod"
