"""An image's own Python environment: its wheelhouse installed offline into a venv (issue 13).

An image whose manifest says `python: {wheels: DIR}` brings its dependencies as wheels. At
placement the process VIM makes a venv for the image (`python -m venv --without-pip`, from the
interpreter SFEs run on, without the platform's packages) and installs every wheel of the
wheelhouse into it with the platform's pip (`pip --python VENV install --no-index
--find-links DIR --only-binary :all:`): offline, and wheels only, so installing runs none of
the tenant's code (an sdist's setup.py would). The venv is cached per image digest under
`<root>/venvs/<hex>` (built in a temporary directory, renamed into place: present whole or not
at all), shared by every SFE of that image, and mounted read-only in their sandboxes at
`VENV_DIR`; the entrypoint's `python`/`python3` becomes the venv's.

Bounded: pip gets `timeout_s`; a failure is a permanent `PyenvError` carrying pip's last lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from flame.sfemc.images.deps import wheel_files
from flame.sfemc.vim.sandbox import VENV_DIR

__all__ = ["VENV_DIR", "PyenvError", "ensure_venv", "venv_argv"]

_TAIL_LINES = 12


class PyenvError(Exception):
    """The image's environment could not be made; the message ends with pip's last lines."""


def ensure_venv(
    root: Path,
    digest: str,
    app: Path,
    wheels: str,
    *,
    python: str | None = None,
    timeout_s: float = 300.0,
) -> Path:
    """The venv of image `digest` (made now unless cached), its wheelhouse `app/wheels` in it."""
    venvs = root / "venvs"
    venvs.mkdir(parents=True, exist_ok=True)
    hexd = digest.removeprefix("sha256:")
    final = venvs / hexd
    with _locked(venvs / f".{hexd}.lock"):
        if (final / ".flame-complete").exists():
            return final
        building = venvs / f".{hexd}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a partial one from an older version
        try:
            _build(building, app / wheels, python or sys.executable, timeout_s)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        _readable_by_all(building)  # the SFE's own uid runs it (read-only)
        building.rename(final)
    return final


def venv_argv(argv: Sequence[str], venv: Path, *, sandboxed: bool) -> list[str]:
    """The entrypoint run on the image's venv (a `python`/`python3` one; others unchanged)."""
    argv = list(argv)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = f"{VENV_DIR}/bin/python" if sandboxed else str(venv / "bin" / "python")
    return argv


def _build(dest: Path, wheelhouse: Path, python: str, timeout_s: float) -> None:
    wheels = wheel_files(wheelhouse)
    if not wheels:
        raise PyenvError(f"the image's wheelhouse {wheelhouse.name}/ holds no wheel")
    # The base interpreter, not a venv's: the image's venv must not see the platform's packages.
    base = _base_python(python, timeout_s)
    _run([base, "-m", "venv", "--without-pip", str(dest)], "python -m venv", timeout_s)
    pip = [sys.executable, "-m", "pip", "--python", str(dest / "bin" / "python")]
    pip += ["--disable-pip-version-check", "--no-input", "--no-cache-dir", "install"]
    pip += ["--no-index", "--find-links", str(wheelhouse), "--only-binary", ":all:"]
    _run([*pip, *map(str, wheels)], "pip install", timeout_s)
    (dest / ".flame-complete").write_text("")


def _base_python(python: str, timeout_s: float) -> str:
    code = "import sys; print(getattr(sys, '_base_executable', sys.executable))"
    out = _run([python, "-I", "-c", code], "python", timeout_s)
    return out.strip().splitlines()[-1]


def _run(argv: Sequence[str], what: str, timeout_s: float) -> str:
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    env["PIP_CONFIG_FILE"] = os.devnull  # the platform user's pip.conf must not add an index
    try:
        done = subprocess.run(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PyenvError(
            f"{what} did not finish in {timeout_s:g}s; last output:\n{_tail(exc.stdout)}"
        ) from None
    except OSError as exc:
        raise PyenvError(f"cannot run {what}: {exc}") from None
    if done.returncode != 0:
        output = _tail((done.stdout or "") + (done.stderr or ""))
        raise PyenvError(
            f"installing the image's wheelhouse failed ({what} exited with status "
            f"{done.returncode}); last output:\n{output}"
        )
    return done.stdout


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-_TAIL_LINES:])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _readable_by_all(tree: Path) -> None:
    for top, dirs, files in os.walk(tree):
        for name in dirs + files:
            entry = Path(top, name)
            if not entry.is_symlink():
                entry.chmod(entry.stat().st_mode | 0o444 | (0o111 if entry.is_dir() else 0))
    tree.chmod(0o755)
