"""Compile the service router's request path with mypyc, in place (`make build`).

The modules listed in `flame.sfr.router.native.COMPILED_MODULES` become C extensions next
to their sources (src/flame/sfr/router/*.so, git-ignored); Python imports them instead of
the .py files. Type-checks them first, so it needs the dev dependencies (mypy) and a C
compiler. `--clean` removes the compiled files (back to interpreted).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from mypyc.build import mypycify
from native_cli import run
from setuptools import setup

REPO = Path(__file__).resolve().parents[1]
ROUTER = REPO / "src" / "flame" / "sfr" / "router"
BUILD = REPO / "build" / "router-native"
GROUP = "flame_router"


def modules() -> tuple[str, ...]:
    # Loaded by path: importing the package would import the very modules being rebuilt.
    spec = importlib.util.spec_from_file_location("_router_native", ROUTER / "native.py")
    assert spec is not None
    assert spec.loader is not None
    native = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = native  # dataclasses look their module up
    spec.loader.exec_module(native)
    return tuple(native.COMPILED_MODULES)


def clean() -> None:
    for path in [*ROUTER.glob("*.so"), *(REPO / "src").glob(f"{GROUP}__mypyc*.so")]:
        path.unlink()
    shutil.rmtree(BUILD, ignore_errors=True)


def build() -> None:
    names = modules()
    clean()
    os.chdir(REPO)
    os.environ.setdefault("MYPYPATH", "src")
    paths = [str((ROUTER / f"{name}.py").relative_to(REPO)) for name in names]
    setup(
        name="flame-router-native",
        ext_modules=mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(BUILD)),
        script_args=["build_ext", "--inplace", "--build-temp", str(BUILD / "temp"), "-q"],
    )
    missing = [n for n in names if not any(ROUTER.glob(f"{n}.*.so"))]
    if missing:
        raise SystemExit(f"mypyc built no extension for: {', '.join(missing)}")
    print(f"compiled {len(names)} router modules with mypyc into {ROUTER.relative_to(REPO)}")


def main() -> None:
    run(
        __doc__.splitlines()[0],
        build=build,
        clean=clean,
        what="SR's request path",
        fallback="the interpreted router",
    )


if __name__ == "__main__":
    main()
