"""Issue 13 item 5: an image carries its own Python dependencies (`python: {wheels: DIR}`).

The wheelhouse is built here, offline, with `pip wheel` from a tiny package this test writes
(`flamedeps_probe`, which the host's interpreter does not have); the process VIM installs it at
placement into a venv of the image's own and runs the SF on that venv, inside the sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from flame.common.diagnostics import ValidationFailed
from flame.sfemc.images import ImageError, ImageRepository, build_image
from flame.sfemc.vim.base import EndpointSpec, VimError, VimState
from flame.sfemc.vim.process import ProcessVim
from flame.sfemc.vim.sandbox import VENV_DIR
from ranges import sfe_port_base

PROBE = "flamedeps_probe"
SECRET = "answer-from-the-wheel-42"

SERVER = f"""\
import http.server, os, sys
import {PROBE}

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ({PROBE}.VALUE + " " + sys.executable).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(
    (os.environ["FLAME_HOST"], int(os.environ["FLAME_PORT"])), H
).serve_forever()
"""


def _pip_wheel(src: Path, out: Path) -> None:
    pytest.importorskip("setuptools", reason="building the test wheel needs setuptools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )


def make_wheelhouse(tmp: Path, out: Path, *, requires: str = "") -> None:
    """A wheel of `flamedeps_probe` (optionally depending on `requires`) into `out`."""
    pkg = tmp / f"pkg-{len(list(tmp.glob('pkg-*')))}"
    (pkg / PROBE).mkdir(parents=True)
    (pkg / PROBE / "__init__.py").write_text(f"VALUE = {SECRET!r}\n")
    deps = f"dependencies = [{requires!r}]\n" if requires else ""
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{PROBE}"\nversion = "1.0"\n{deps}'
        f'[tool.setuptools]\npackages = ["{PROBE}"]\n'
    )
    _pip_wheel(pkg, out)


def make_sf(tmp: Path, name: str = "depsf", *, requires: str = "") -> Path:
    """An SF directory whose server imports the probe, with its wheelhouse."""
    src = tmp / name
    src.mkdir(parents=True)
    (src / "server.py").write_text(SERVER)
    make_wheelhouse(tmp, src / "wheelhouse", requires=requires)
    (src / "flame-sf.yaml").write_text(
        f"name: {name}\nversion: '1.0'\nentrypoint: [python3, server.py]\n"
        "ports: [{name: http, port: 8080}]\npython: {wheels: wheelhouse}\n"
    )
    return src


def spec(digest: str, sfe: str = "d1.dep.c1") -> EndpointSpec:
    return EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="d1",
        sf="dep",
        cluster="c1",
        fqdn="dep.example",
        image=digest,
    )


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepository:
    return ImageRepository(tmp_path / "images")


@pytest_asyncio.fixture
async def vim(tmp_path: Path, repo: ImageRepository) -> AsyncIterator[ProcessVim]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    base = sfe_port_base()  # apart from free_port's and other workers' ports (ranges.py)
    driver = ProcessVim(
        tmp_path / "vim",
        {"c1": range(base, base + 20)},
        repo,
        grace_s=2.0,
        boot_timeout_s=20.0,
        sandbox="required",
    )
    try:
        yield driver
    finally:
        for status in await driver.list():
            await driver.remove(status.sfe)
        await driver.close()


def test_the_host_lacks_the_probe_package() -> None:
    """The premise: without the image's venv the SF's import would fail here."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {PROBE}"], check=False, capture_output=True
    )
    assert done.returncode != 0


@pytest.mark.asyncio
async def test_an_sf_runs_on_its_own_wheels_sandboxed(
    tmp_path: Path, repo: ImageRepository, vim: ProcessVim
) -> None:
    """Issue 13 item 5: placement installs the wheelhouse offline into the image's venv (cached
    per digest), boot runs the entrypoint on that venv's python, inside the sandbox."""
    digest = repo.put(build_image(make_sf(tmp_path))[0]).digest
    placed = await vim.place(spec(digest))
    venv = vim.root / "venvs" / digest.removeprefix("sha256:")
    assert (venv / ".flame-complete").exists()
    site = list(venv.glob(f"lib/python*/site-packages/{PROBE}/__init__.py"))
    assert site, "the wheel was not installed into the image's venv"
    status = await vim.boot("d1.dep.c1")
    assert status.state is VimState.RUNNING, status
    port = placed.ports["http"]
    async with httpx.AsyncClient(trust_env=False) as http:
        body = (await http.get(f"http://127.0.0.1:{port}/")).text
    value, executable = body.split(" ", 1)
    assert value == SECRET
    assert executable == f"{VENV_DIR}/bin/python"  # the venv, as the sandbox shows it
    # A second SFE of the same image reuses the cached venv (same directory, not rebuilt).
    marker = (venv / ".flame-complete").stat().st_mtime_ns
    await vim.place(spec(digest, "d1.dep2.c1"))
    assert (venv / ".flame-complete").stat().st_mtime_ns == marker


@pytest.mark.asyncio
async def test_a_failed_install_fails_the_placement_with_pips_tail(
    tmp_path: Path, repo: ImageRepository, vim: ProcessVim
) -> None:
    """A wheel needing a package the wheelhouse lacks: offline install fails, the placement is
    refused permanently with pip's last lines in the reason, and no venv is left behind."""
    src = make_sf(tmp_path, "broken", requires="flamedeps-not-there>=1")
    digest = repo.put(build_image(src)[0]).digest
    with pytest.raises(VimError) as caught:
        await vim.place(spec(digest))
    assert caught.value.permanent
    assert "installing the image's wheelhouse failed" in caught.value.reason
    assert "flamedeps-not-there" in caught.value.reason  # pip's own words, tail included
    assert not (vim.root / "venvs" / digest.removeprefix("sha256:")).exists()
    assert not list((vim.root / "venvs").glob(".*.building"))


@pytest.mark.asyncio
async def test_the_vim_refuses_another_tenants_image(
    tmp_path: Path, repo: ImageRepository, vim: ProcessVim
) -> None:
    """Admission refuses it first; the VIM refuses it again (a spec from elsewhere)."""
    src = tmp_path / "plain"
    src.mkdir()
    (src / "flame-sf.yaml").write_text("name: plain\nentrypoint: [python3, -c, pass]\n")
    digest = repo.put(build_image(src)[0], owner="globex").digest
    with pytest.raises(VimError, match="that tenant 'acme' may use") as caught:
        await vim.place(spec(digest))
    assert caught.value.permanent
    assert repo.resolve(digest, "globex") == digest


def test_packaging_checks_the_wheelhouse(tmp_path: Path) -> None:
    src = tmp_path / "sf"
    src.mkdir()
    (src / "server.py").write_text("")
    (src / "flame-sf.yaml").write_text(
        "name: sf\nentrypoint: [python3, server.py]\npython: {wheels: wheelhouse}\n"
    )
    with pytest.raises(ImageError, match="is not a directory"):
        build_image(src)
    (src / "wheelhouse").mkdir()
    with pytest.raises(ImageError, match=r"holds no \.whl"):
        build_image(src)
    (src / "flame-sf.yaml").write_text(
        "name: sf\nentrypoint: [python3, server.py]\npython: {wheels: ../elsewhere}\n"
    )
    with pytest.raises(ValidationFailed, match="inside the SF's directory"):
        build_image(src)


def test_the_manifest_keeps_the_wheelhouse(tmp_path: Path) -> None:
    blob, manifest = build_image(make_sf(tmp_path))
    assert manifest.wheels == "wheelhouse"
    stored = ImageRepository(tmp_path / "images").put(blob)
    assert stored.manifest.wheels == "wheelhouse"
