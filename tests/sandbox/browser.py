"""Headless Chromium (Debian's) for dashboard tests: the DOM after the page's scripts ran, and
a screenshot kept as a test artefact. No driver library: chromium's own --dump-dom and
--screenshot, with a virtual time budget long enough for a few snapshot polls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".artifacts"

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, profile: Path, *, budget_ms: int = 4000) -> str:
    """The DOM of `url` once its scripts ran for `budget_ms` of virtual time."""
    exe = chromium()
    assert exe is not None
    done = subprocess.run(
        [
            exe,
            *_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return done.stdout


def screenshot(url: str, profile: Path, name: str, *, budget_ms: int = 4000) -> Path:
    exe = chromium()
    assert exe is not None
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    subprocess.run(
        [
            exe,
            *_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--window-size=1400,1400",
            f"--screenshot={out}",
            url,
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    return out
