"""What the real `flame` CLI accepts: option names of each `flame serve X`, read from its
`--help` (the installed entry point, run as an operator would), cached per component."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPONENTS = ("pce", "sr", "clmc", "orchestrator", "dashboard", "vim")
_OPTION = re.compile(r"^\s{2}(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(?:[ /]|$)(\S*)", re.MULTILINE)


def flame_exe() -> str:
    """The venv's `flame` (the one tests run against), else the one on PATH."""
    here = Path(sys.executable).with_name("flame")
    return str(here) if here.exists() else (shutil.which("flame") or "flame")


@functools.cache
def serve_options(component: str) -> dict[str, bool]:
    """{--option: takes a value} of `flame serve COMPONENT`, from its --help."""
    out = subprocess.run(
        [flame_exe(), "serve", component, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    options: dict[str, bool] = {}
    for line in out.splitlines():
        m = _OPTION.match(line)
        if m is None:
            continue
        # `--name TEXT`, `--db FILE|URL`: a metavar follows; a flag has its help text next.
        rest = line[m.end(1) :].strip()
        metavar = rest.split("  ", 1)[0] if rest else ""
        options[m.group(1)] = bool(metavar) and (metavar.isupper() or metavar.startswith("["))
    options.pop("--help", None)
    return options


def check_argv(component: str, argv: list[str]) -> list[str]:
    """Problems with `argv` (what follows `flame serve COMPONENT`): unknown options, and
    options that take a value given none."""
    known = serve_options(component)
    problems: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("--"):
            problems.append(f"{component}: stray argument {word!r}")
            i += 1
            continue
        name, eq, _ = word.partition("=")
        if name not in known:
            problems.append(f"{component}: no option {name} in `flame serve {component}`")
        elif known[name] and not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                problems.append(f"{component}: {name} needs a value")
            i += 1
        i += 1
    return problems
