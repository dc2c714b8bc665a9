"""An image's own Python dependencies: a wheelhouse packed inside it (`python: {wheels: DIR}`).

The tenant builds the wheelhouse on its own machine (`pip wheel -r requirements.txt -w
wheelhouse`); `flame package`/`flame push` only checks that it is there and packs it with the
rest of the SF's directory. Installing it, offline, into an environment of the image's own is
the VIM's job at placement (`flame.sfemc.vim.pyenv`)."""

from __future__ import annotations

import re
from pathlib import Path

from flame.sfemc.images.errors import ImageError
from flame.sfemc.images.manifest import ImageManifest

__all__ = ["check_wheelhouse", "wheel_files"]

# PEP 427: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
_WHEEL = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.+!]+(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def wheel_files(wheelhouse: Path) -> list[Path]:
    """The wheels of a wheelhouse (only its top level, as pip's --find-links reads it)."""
    return sorted(p for p in wheelhouse.glob("*.whl") if p.is_file() and not p.is_symlink())


def check_wheelhouse(directory: Path, manifest: ImageManifest) -> None:
    """Refuse to package an image whose declared wheelhouse is missing, empty or not wheels."""
    if manifest.wheels is None:
        return
    wheelhouse = directory / manifest.wheels
    hint = "build it first: pip wheel -r requirements.txt -w " + manifest.wheels
    if not wheelhouse.is_dir():
        raise ImageError(f"python.wheels: {wheelhouse} is not a directory", hint=hint)
    wheels = wheel_files(wheelhouse)
    if not wheels:
        raise ImageError(f"python.wheels: {wheelhouse} holds no .whl file", hint=hint)
    bad = [p.name for p in wheels if not _WHEEL.match(p.name)]
    if bad:
        raise ImageError(
            f"python.wheels: not valid wheel file names: {', '.join(bad)}",
            hint="keep the names pip gave them",
        )
