"""`flame topology show|validate|link-down|link-up`, `flame routes`, `flame serve pce`, against a
live PCE process on 127.0.0.1 (SFR-4, SFR-7, SFR-13)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame.cli.main import main
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfr.client import PceClient

from .test_api import LINE, LivePce, live_pce, x_endpoint

REPO = Path(__file__).resolve().parents[2]
SANDPIT = REPO / "examples" / "topology" / "sandpit.yaml"


class Server:
    def __init__(self, pce: LivePce, operator: str, tenant: str, topology: Path) -> None:
        self.pce, self.url = pce, pce.url
        self.operator, self.tenant = operator, tenant
        self.topology = topology


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("pce")
    topology = root / "line.yaml"
    topology.write_text(LINE, encoding="utf-8")
    state = root / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    tenant = tokens.issue("acme", Role.TENANT, "acme")
    with live_pce(state, topology, root / "pce.sqlite3", "cli-pce") as pce:
        pce.wait_role("active")
        with PceClient(pce.url, operator) as client:
            client.register(x_endpoint())
            client.register(x_endpoint("x-a", "c-a", 9002))
        yield Server(pce, operator, tenant, topology)


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's config in tmp_path; no token or PCE unless a test points at one."""
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    monkeypatch.setenv("FLAME_CONFIG", str(config))
    monkeypatch.setenv("FLAME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("FLAME_DEBUG", "FLAME_TOKEN", "FLAME_API_URL", "FLAME_PCE_URL", "FLAME_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def at(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Point the CLI at the live PCE with the operator's token (via the environment)."""
    monkeypatch.setenv("FLAME_PCE_URL", server.url)
    monkeypatch.setenv("FLAME_TOKEN", server.operator)
    return server


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- topology show / validate (SFR-7) -----------------------------------------------------------


def test_show_a_file_lists_nodes_links_and_static_registrations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(LINE, encoding="utf-8")
    code, out, err = run(capsys, "topology", "show", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"topology 'line' ({path}): 8 node(s), 5 link(s)"
    assert any(line.split()[:4] == ["c-a", "cluster", "sr-a", "bristol"] for line in lines)
    assert any(
        line.split() == ["sr-b", "—", "sr-c", "5", "ms", "-", "-", "-", "up"] for line in lines
    )
    assert any(line.startswith("static.example@c-a") for line in lines)


def test_show_a_file_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "topology", "show", str(SANDPIT))
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "sandpit"
    assert len(doc["nodes"]) == 11
    assert doc["links"][0] == {
        "a": "sr-ue-1",
        "b": "sw-west",
        "latency_ms": 1.0,
        "bandwidth_bps": 1e10,
        "cost": None,
        "state": "up",
        "class": None,
    }


def test_show_needs_a_file_or_a_pce_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "topology", "show", str(SANDPIT), "--pce", "http://127.0.0.1:1")
    assert code == 1
    assert "not both" in err


def test_validate_is_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "topology", "validate", str(SANDPIT))
    assert code == 0
    assert run(capsys, "topology", "check", str(SANDPIT))[1] == out
    bad = tmp_path / "bad.yaml"
    bad.write_text(LINE.replace("cluster: c-a", "cluster: c-z"), encoding="utf-8")
    code, _, err = run(capsys, "topology", "validate", str(bad))
    assert code == 1
    assert f"{bad}:23:" in err
    assert "T103" in err
    assert "'c-z' is not a cluster" in err


# -- against the live PCE ----------------------------------------------------------------------


def test_link_down_and_up_change_what_the_pce_shows(
    capsys: pytest.CaptureFixture[str], at: Server
) -> None:
    code, out, err = run(capsys, "topology", "link-down", "sr-b", "sr-c")
    assert code == 0, err
    assert out.startswith("link sr-b — sr-c is down: 5 SR tree(s) changed; new tables: sr-a v")
    try:
        code, out, _ = run(capsys, "topology", "link-down", "sr-b", "sr-c")
        assert out.strip() == "link sr-b — sr-c was already down; nothing changed"
        code, out, _ = run(capsys, "topology", "show")  # no FILE: the PCE's view
        assert code == 0
        assert f"({at.url})" in out.splitlines()[0]
        assert any(
            line.split()[:3] == ["sr-b", "—", "sr-c"] and line.endswith("down")
            for line in out.splitlines()
        )
        code, out, _ = run(capsys, "routes", "x.example", "--from", "sr-a")
        assert "sr-a → sr-c → sr-d" in out  # rerouted round the failed link
    finally:
        code, out, err = run(capsys, "--json", "topology", "link-up", "sr-b", "sr-c")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["state"] == "up"
    assert doc["changed"] is True
    assert set(doc["versions"]) == {"sr-a", "sr-b", "sr-c", "sr-d", "sr-e"}


def test_routes_from_one_sr_ranked_with_path_and_cost(
    capsys: pytest.CaptureFixture[str], at: Server
) -> None:
    code, out, err = run(capsys, "routes", "x.example", "--from", "sr-e")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("x.example from sr-e (table v")
    assert lines[1].split() == ["#", "ENDPOINT", "CLUSTER", "ADDRESS", "COST", "LATENCY", "PATH"]
    assert lines[2].split() == [
        "1",
        "x-d",
        "c-d",
        "127.0.0.1:9001",
        "2",
        "2",
        "ms",
        "sr-e",
        "→",
        "sr-d",
    ]
    assert lines[3].split()[:6] == ["2", "x-a", "c-a", "127.0.0.1:9002", "9", "9"]
    assert len(lines) == 4


def test_routes_from_every_sr_and_as_json(capsys: pytest.CaptureFixture[str], at: Server) -> None:
    code, out, _ = run(capsys, "routes", "x.example")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines() if " from " in line] == [
        "sr-a",
        "sr-b",
        "sr-c",
        "sr-d",
        "sr-e",
    ]
    code, out, _ = run(capsys, "--json", "routes", "x.example", "--from", "ue-1")
    doc = json.loads(out)
    (table,) = doc["tables"]
    assert table["sr"] == "sr-a"
    assert [r["endpoint"]["sfe"] for r in table["routes"]["x.example"]] == ["x-a", "x-d"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("routes", "nothing.example"), "no routes for 'nothing.example'"),
        (("routes", "x.example", "--from", "sr-zz"), "unknown node 'sr-zz'"),
        (("topology", "link-down", "sr-a", "sr-e"), "no link between 'sr-a' and 'sr-e'"),
        (("topology", "link-down", "sr-a", "sr-q"), "unknown node 'sr-q'"),
    ],
)
def test_pce_errors_exit_1_with_the_message(
    capsys: pytest.CaptureFixture[str], at: Server, args: tuple[str, ...], words: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 1
    assert out == ""
    assert words in err
    code, out, _ = run(capsys, "--json", *args)
    assert code == 1
    assert words in json.loads(out)["message"]


def test_tenants_cannot_take_links_down(
    capsys: pytest.CaptureFixture[str], at: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAME_TOKEN", at.tenant)
    code, _, err = run(capsys, "topology", "link-down", "sr-a", "sr-b")
    assert code == 1
    assert "requires the operator role" in err


def test_delegate_list_and_undelegate(
    capsys: pytest.CaptureFixture[str], at: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 item 9: delegating an FQDN had no CLI, only a raw PCE call."""
    code, out, err = run(capsys, "delegate", "cli.example", "--tenant", "acme")
    assert code == 0, err
    assert "cli.example" in out
    assert "acme" in out
    code, out, _ = run(capsys, "--json", "delegations")
    assert {"name": "cli.example", "tenant": "acme"} in json.loads(out)
    monkeypatch.setenv("FLAME_TOKEN", at.tenant)
    code, out, _ = run(capsys, "delegations")  # a tenant sees its own
    assert "cli.example\tacme" in out
    code, _, err = run(capsys, "delegate", "mine.example", "--tenant", "acme")
    assert code == 1
    assert "requires the operator role" in err
    monkeypatch.setenv("FLAME_TOKEN", at.operator)
    code, out, _ = run(capsys, "undelegate", "cli.example")
    assert code == 0
    code, out, _ = run(capsys, "--json", "delegations")
    assert "cli.example" not in out


def test_without_a_pce_url_the_cli_says_so_instead_of_calling_the_orchestrator(
    capsys: pytest.CaptureFixture[str], server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 item 5: pce_url fell back to api_url and sent PCE calls to the orchestrator."""
    monkeypatch.setenv("FLAME_API_URL", server.url)  # even where a PCE answers at api_url
    monkeypatch.setenv("FLAME_TOKEN", server.operator)
    code, _, err = run(capsys, "routes", "x.example")
    assert code == 1
    assert "no PCE URL" in err
    assert "--pce" in err
    assert "pce_url" in err


def test_no_token_is_a_clear_401(
    capsys: pytest.CaptureFixture[str], at: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAME_TOKEN")
    code, _, err = run(capsys, "routes", "x.example")
    assert code == 1
    assert "missing Authorization header" in err


def test_pce_flag_wins_over_the_config(capsys: pytest.CaptureFixture[str], at: Server) -> None:
    port = free_port()
    code, _, err = run(capsys, "routes", "x.example", "--pce", f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach the PCE at http://127.0.0.1:{port}" in err
    assert "flame serve pce" in err


# -- serve pce ------------------------------------------------------------------------------------


@pytest.fixture
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, `serve pce` must not install its log handler on pytest's captured stderr."""
    monkeypatch.setattr("flame.cli.sfr_commands.setup_logging", lambda *_: None)


@pytest.mark.usefixtures("quiet_logging")
def test_serve_pce_refuses_a_bad_topology_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flame_topology: 2\n", encoding="utf-8")
    code, _, err = run(capsys, "serve", "pce", "--topology", str(bad), "--db", str(tmp_path / "db"))
    assert code == 1
    assert "T106" in err


@pytest.mark.usefixtures("quiet_logging")
def test_serve_pce_reports_a_busy_port(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(
            capsys,
            "serve",
            "pce",
            "--topology",
            str(SANDPIT),
            "--db",
            str(tmp_path / "db"),
            "--port",
            str(port),
        )
    assert code == 1
    assert f"the PCE could not start on 127.0.0.1:{port}" in err
    assert "no API tokens" in err  # and a hint how to issue one
    assert "flame token issue" in err


# -- serve sr -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("quiet_logging")
@pytest.mark.parametrize(
    ("flags", "hop", "port"),
    [
        ((), False, None),
        (("--egress-hop",), True, None),
        (("--egress-hop", "--egress-port", "9090"), True, 9090),
    ],
)
def test_serve_sr_egress_hop_flags(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    hop: bool,
    port: int | None,
) -> None:
    """SFR-10: `--egress-hop [--egress-port N]` reach the SR's configuration (off by default)."""
    served: list[object] = []
    monkeypatch.setattr("flame.sfr.router.server.serve", lambda config, **_: served.append(config))
    code, _, err = run(capsys, "serve", "sr", "--id", "sr-x", "--pce", "http://pce", *flags)
    assert code == 0, err
    (config,) = served
    assert (config.egress_hop, config.egress_port) == (hop, port)  # type: ignore[attr-defined]
