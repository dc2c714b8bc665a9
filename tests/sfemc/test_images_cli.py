"""`flame package` and `flame images` (SFEMC-6): output, JSON, exit codes 0/1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flame.cli.main import main
from flame.sfemc.images import ImageRepository

ECHO = Path(__file__).resolve().parents[2] / "examples" / "sf" / "echo"


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    monkeypatch.setenv("FLAME_CONFIG", str(config))
    monkeypatch.setenv("FLAME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FLAME_DEBUG", raising=False)
    return tmp_path / "state"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_package_list_verify_rm(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, err = run(capsys, "package", str(ECHO), "--tag", "1.0")
    assert code == 0, err
    digest = out.strip()
    assert digest.startswith("sha256:")
    assert len(digest) == 71
    assert "packaged 'echo'" in err
    assert run(capsys, "package", str(ECHO))[1].strip() == digest  # deterministic

    code, out, _ = run(capsys, "images")
    assert code == 0
    assert digest[:19] in out
    assert "echo" in out
    assert "1.0" in out
    code, out, _ = run(capsys, "--json", "images", "list")
    listed = json.loads(out)
    assert [(i["digest"], i["name"], i["tags"]) for i in listed] == [(digest, "echo", ["1.0"])]

    code, out, _ = run(capsys, "images", "verify")
    assert (code, out.strip()) == (0, "1 of 1 image(s) intact")
    blob = ImageRepository(state_dir / "images").blob_path(digest)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    code, out, err = run(capsys, "--json", "images", "verify", "echo:1.0")
    assert code == 1
    assert json.loads(out)["corrupted"][0]["digest"] == digest

    # An endpoint placed from it (a process VIM state file) blocks deletion unless --force.
    sfe = state_dir / "vim" / "sfes" / "i1.echo.c1"
    sfe.mkdir(parents=True)
    (sfe / "state.json").write_text(json.dumps({"digest": digest}))
    code, _, err = run(capsys, "images", "rm", digest)
    assert code == 1
    assert "used by 1 endpoint(s): i1.echo.c1" in err
    code, out, _ = run(capsys, "images", "rm", "--force", "echo")
    assert (code, out.strip()) == (0, f"deleted {digest} (echo)")
    assert run(capsys, "--json", "images")[1].strip() == "[]"


def test_package_errors_are_located_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sf = tmp_path / "sf"
    shutil.copytree(ECHO, sf)
    (sf / "flame-sf.yaml").write_text("name: echo\nentrypoint: [python3, server.py]\nports: [0]\n")
    code, _, err = run(capsys, "package", str(sf))
    assert code == 1
    assert f"{sf / 'flame-sf.yaml'}:3:9: E1001 port must be a number from 1 to 65535" in err
    code, out, _ = run(capsys, "--json", "package", str(sf))
    assert code == 1
    diag = json.loads(out)["diagnostics"][0]
    assert (diag["line"], diag["column"], diag["code"]) == (3, 9, "E1001")

    code, _, err = run(capsys, "package", str(tmp_path / "nope"))
    assert code == 1
    assert "is not a directory" in err
    code, _, err = run(capsys, "package", str(sf), "--port", "http=x")
    assert code == 1
    assert "--port expects PORT or NAME=PORT" in err
    code, _, err = run(capsys, "images", "rm", "sha256:bad")
    assert code == 1
    assert "not an image digest" in err


def test_package_from_flags_to_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sf = tmp_path / "bare"
    sf.mkdir()
    (sf / "server.py").write_text("print('hi')\n")
    archive = tmp_path / "bare.tar.gz"
    code, out, err = run(
        capsys,
        "--json",
        "package",
        str(sf),
        "--entrypoint",
        "python3 server.py",
        "--port",
        "web=9000",
        "--health",
        "/up",
        "--env",
        "A=1",
        "--memory",
        "64 MB",
        "--gzip",
        "-o",
        str(archive),
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["stored"] == str(archive)
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    assert doc["manifest"]["ports"] == [{"name": "web", "container_port": 9000, "protocol": "http"}]
    assert doc["manifest"]["health"]["path"] == "/up"
    assert doc["manifest"]["resources"]["memory_bytes"] == 64_000_000
    info = ImageRepository(tmp_path / "r").put(archive.read_bytes(), digest=doc["digest"])
    assert info.manifest.environment == {"A": "1"}
