"""Compile the PCE's shortest-path kernel with Cython, in place (`make build`).

src/flame/sfr/_sssp.pyx becomes a C extension next to it (src/flame/sfr/_sssp.*.so and the
generated _sssp.c, both git-ignored); `flame.sfr.pce` imports it for whole shortest-path trees
and the ranking of tables, `flame.sfr.graph` for reading links, and both fall back to scipy's
Dijkstra, numpy and Python when it is missing. Needs the dev dependencies (Cython) and a C
compiler. `--clean` removes the compiled files (back to scipy).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from native_cli import run

REPO = Path(__file__).resolve().parents[1]
SFR = REPO / "src" / "flame" / "sfr"
SOURCE = SFR / "_sssp.pyx"
BUILD = REPO / "build" / "pce-native"
MODULE = "flame.sfr._sssp"


def clean() -> None:
    for path in [*SFR.glob("_sssp.*.so"), *SFR.glob("_sssp.*.pyd"), SFR / "_sssp.c"]:
        path.unlink(missing_ok=True)
    shutil.rmtree(BUILD, ignore_errors=True)


def build() -> None:
    from Cython.Build import cythonize  # noqa: PLC0415 - only when building
    from setuptools import Extension, setup  # noqa: PLC0415

    clean()
    os.chdir(REPO)
    extension = Extension(
        MODULE,
        [str(SOURCE.relative_to(REPO))],
        extra_compile_args=["-O3"],
    )
    setup(
        name="flame-pce-native",
        ext_modules=cythonize([extension], quiet=True, build_dir=None),
        package_dir={"": "src"},
        script_args=[
            "build_ext",
            "--inplace",
            "--build-temp",
            str(BUILD / "temp"),
            "--build-lib",
            str(BUILD / "lib"),
            "-q",
        ],
    )
    if not any(SFR.glob("_sssp.*.so")) and not any(SFR.glob("_sssp.*.pyd")):
        raise SystemExit(f"Cython built no extension for {MODULE}")
    print(f"compiled the PCE's shortest-path kernel with Cython into {SFR.relative_to(REPO)}")


def main() -> None:
    run(
        __doc__.splitlines()[0],
        build=build,
        clean=clean,
        what="PCE's shortest-path kernel",
        fallback="scipy's Dijkstra",
    )


if __name__ == "__main__":
    main()
