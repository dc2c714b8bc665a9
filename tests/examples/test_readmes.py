"""Every example's README, followed by a new user (issue 14, "a new user can deploy every example
on `flame up` by following its README section alone"): the README's ```sh blocks run exactly as
written, in order, in one bash with `set -euo pipefail`, from the repository root, with the venv's
`flame` on the PATH and a fresh HOME, config and state directory. Only the ports differ
(`FLAME_FREE_PORTS=1`, so the run cannot collide with another FLAME-in-a-box on this machine).

A README whose commands fail (an image it does not package, an FQDN it does not delegate, a
request `flame ue run` counts as failed) fails here with the transcript."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_commands(readme: Path) -> str:
    """The README's ```sh blocks, in order (other fences are prose, not commands)."""
    return "\n".join(m.group(1) for m in _BLOCK.finditer(readme.read_text(encoding="utf-8")))


def _readmes() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*/README.md") if readme_commands(p).strip())


def test_readme_blocks_are_found() -> None:
    """The parser sees the blocks a user would copy (a renamed fence would silently test nothing)."""
    commands = readme_commands(EXAMPLES / "vod" / "README.md")
    assert commands.splitlines()[0] == "flame up -d --topology sandpit --no-demo"
    assert "flame ue run" in commands
    assert commands.rstrip().endswith("flame down")
    assert {p.parent.name for p in _readmes()} >= {"vod", "media-content"}


@pytest.mark.parametrize("readme", _readmes(), ids=lambda p: p.parent.name)
def test_an_example_deploys_by_its_readme_alone(readme: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.touch()
    bindir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path / "home"),
        "FLAME_FREE_PORTS": "1",
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    script = (
        "set -euo pipefail\n"
        "trap 'flame down >/dev/null 2>&1 || true' EXIT\n"  # whatever happened, nothing runs on
        + readme_commands(readme)
    )
    try:
        run = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "flame", "down"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
    transcript = f"--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-6000:]}"
    assert run.returncode == 0, f"{readme.relative_to(ROOT)} failed:\n{transcript}"
