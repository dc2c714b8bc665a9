"""SF images and the image repository (SFEMC-6): determinism, located manifest errors,
integrity on every read, and unpacking that nothing crafted can escape."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from flame.common.diagnostics import ValidationFailed
from flame.sfemc import images
from flame.sfemc.images import (
    ImageError,
    ImageNotFound,
    ImageRepository,
    IntegrityError,
    UnsafeArchive,
    build_image,
    digest_of,
)

ECHO = Path(__file__).resolve().parents[2] / "examples" / "sf" / "echo"


@pytest.fixture
def echo_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "echo"
    shutil.copytree(ECHO, dest)
    return dest


# -- building -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_same_directory_gives_the_same_digest(
    echo_dir: Path, tmp_path: Path, compression: str
) -> None:
    blob1, manifest = build_image(echo_dir, compression=compression)
    # Another copy, touched and with other permissions on a data file: same content, same digest.
    other = tmp_path / "copy" / "echo"
    shutil.copytree(echo_dir, other)
    os.utime(other / "server.py", (1, 1))
    (other / "README.md").chmod(0o600)
    (other / "__pycache__").mkdir()
    (other / "__pycache__" / "x.pyc").write_bytes(b"junk")
    blob2, _ = build_image(other, compression=compression)
    assert digest_of(blob1) == digest_of(blob2)
    magic = images.ZSTD_MAGIC if compression == "zstd" else images.GZIP_MAGIC
    assert blob1.startswith(magic)
    assert manifest.name == "echo"
    assert manifest.entrypoint == ("python3", "server.py")
    assert manifest.ports[0].name == "http"
    assert manifest.ports[0].container_port == 8080
    assert manifest.memory_bytes == 256_000_000
    assert manifest.health is not None
    assert manifest.health.path == "/health"


def test_changed_content_changes_the_digest(echo_dir: Path) -> None:
    before = digest_of(build_image(echo_dir)[0])
    (echo_dir / "server.py").write_text((echo_dir / "server.py").read_text() + "\n# changed\n")
    assert digest_of(build_image(echo_dir)[0]) != before
    (echo_dir / "server.py").chmod(0o755)  # the executable bit is content too
    assert len({before, digest_of(build_image(echo_dir)[0])}) == 2


def test_manifest_errors_are_located(tmp_path: Path) -> None:
    sf = tmp_path / "bad"
    sf.mkdir()
    (sf / "flame-sf.yaml").write_text(
        "name: bad\n"
        "entrypoint: [python3, x.py]\n"
        "ports:\n"
        "  - name: http\n"
        "    port: 70000\n"
        "resources:\n"
        "  memroy: 1 GB\n"
        "  cpus: -1\n"
        "health:\n"
        "  path: health\n"
    )
    with pytest.raises(ValidationFailed) as info:
        build_image(sf)
    found = {(d.code, d.position.line, d.position.column) for d in info.value.diagnostics}
    where = str(sf / "flame-sf.yaml")
    assert all(d.position.file == where for d in info.value.diagnostics)
    assert ("E1001", 5, 11) in found  # the port value
    assert ("E200", 7, 3) in found  # the misspelt key
    assert ("E1001", 8, 9) in found  # cpus
    assert ("E1001", 10, 9) in found  # health path
    hint = next(d.hint for d in info.value.diagnostics if d.code == "E200")
    assert hint is not None
    assert "memory" in hint


def test_missing_entrypoint_and_no_manifest(tmp_path: Path) -> None:
    sf = tmp_path / "noentry"
    sf.mkdir()
    (sf / "flame-sf.yaml").write_text("name: x\nports: [8080]\n")
    with pytest.raises(ValidationFailed) as info:
        build_image(sf)
    assert [d.code for d in info.value.diagnostics] == ["E1002"]
    (sf / "flame-sf.yaml").unlink()
    with pytest.raises(ImageError, match=r"no flame-sf.yaml .*--entrypoint"):
        build_image(sf)
    with pytest.raises(ImageError, match="not a directory"):
        build_image(tmp_path / "missing")


def test_flags_build_or_override_the_manifest(echo_dir: Path, tmp_path: Path) -> None:
    _, m = build_image(
        echo_dir,
        name="echo2",
        overrides={"environment": {"GREETING": "hi"}, "resources": {"memory": "64 MiB"}},
    )
    assert m.name == "echo2"
    assert m.environment == {"GREETING": "hi"}
    assert m.memory_bytes == 64 * 1024 * 1024
    assert m.entrypoint == ("python3", "server.py")  # kept from the file
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.sh").write_text("#!/bin/sh\n")
    _, m2 = build_image(bare, overrides={"entrypoint": "sh run.sh", "ports": [9000]})
    assert m2.entrypoint == ("sh", "run.sh")
    assert m2.ports[0].container_port == 9000
    with pytest.raises(ValidationFailed, match="<command-line flags>"):
        build_image(bare, overrides={"entrypoint": "sh run.sh", "ports": ["x"]})


def test_a_symlink_out_of_the_directory_is_refused(echo_dir: Path) -> None:
    (echo_dir / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="points outside"):
        build_image(echo_dir)
    (echo_dir / "passwd").unlink()
    (echo_dir / "inside").symlink_to("server.py")
    blob, _ = build_image(echo_dir)  # in-tree relative links are fine
    assert blob


# -- the repository ---------------------------------------------------------------------------


def test_put_get_list_verify_delete(echo_dir: Path, tmp_path: Path) -> None:
    repo = ImageRepository(tmp_path / "repo")
    blob, _ = build_image(echo_dir)
    info = repo.put(blob, tags=["1.0"])
    assert info.digest == digest_of(blob)
    assert info.size == len(blob)
    assert repo.get(info.digest).tags == ("1.0",)
    assert repo.resolve("echo:1.0") == info.digest
    assert repo.resolve("echo") == info.digest
    assert [i.digest for i in repo.list()] == [info.digest]
    assert repo.verify(info.digest).name == "echo"
    # Storing again is idempotent and keeps the first creation time; tags accumulate.
    again = repo.put(blob, digest=info.digest, tags=["latest"])
    assert again.created == info.created
    assert again.tags == ("1.0", "latest")
    with pytest.raises(ImageError, match="used by 1 endpoint"):
        repo.delete(info.digest, in_use=["i1.echo.c1"])
    repo.delete(info.digest)
    assert repo.list() == []
    with pytest.raises(ImageNotFound, match="flame images list"):
        repo.get(info.digest)


def test_a_tag_moves_to_the_newer_image(echo_dir: Path, tmp_path: Path) -> None:
    repo = ImageRepository(tmp_path / "repo")
    first = repo.put(build_image(echo_dir)[0], tags=["latest"])
    (echo_dir / "extra.txt").write_text("v2")
    second = repo.put(build_image(echo_dir)[0], tags=["latest"])
    assert repo.get(first.digest).tags == ()
    assert repo.resolve("echo:latest") == second.digest


def test_put_refuses_a_wrong_digest_and_non_images(echo_dir: Path, tmp_path: Path) -> None:
    repo = ImageRepository(tmp_path / "repo")
    blob, _ = build_image(echo_dir)
    with pytest.raises(IntegrityError, match="corrupted or truncated"):
        repo.put(blob[:-10], digest=digest_of(blob))
    with pytest.raises(ImageError, match="not an image digest"):
        repo.get("sha256:xyz")
    with pytest.raises(UnsafeArchive, match="neither a zstd nor a gzip"):
        repo.put(b"plain bytes")
    with pytest.raises(ImageError, match="not a FLAME SF image"):
        repo.put(gzip.compress(_tar([("app/a", b"x")], manifest=False), mtime=0))
    assert repo.list() == []


def test_corruption_on_disk_is_caught_on_every_read(echo_dir: Path, tmp_path: Path) -> None:
    repo = ImageRepository(tmp_path / "repo")
    info = repo.put(build_image(echo_dir)[0])
    path = repo.blob_path(info.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupted"):
        repo.verify(info.digest)
    with pytest.raises(IntegrityError):
        repo.unpack(info.digest, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        repo.verify(info.digest)


def test_unpack_restores_the_tree(echo_dir: Path, tmp_path: Path) -> None:
    (echo_dir / "bin").mkdir()
    (echo_dir / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (echo_dir / "bin" / "run").chmod(0o755)
    (echo_dir / "link").symlink_to("bin/run")
    repo = ImageRepository(tmp_path / "repo")
    info = repo.put(build_image(echo_dir)[0])
    dest = tmp_path / "out"
    manifest = repo.unpack(info.digest, dest)
    assert manifest == info.manifest
    assert (dest / "server.py").read_bytes() == (echo_dir / "server.py").read_bytes()
    assert (dest / "bin" / "run").stat().st_mode & stat.S_IXUSR
    assert os.readlink(dest / "link") == "bin/run"
    with pytest.raises(ImageError, match="not empty"):
        repo.unpack(info.digest, dest)


# -- crafted archives ------------------------------------------------------------------------


def _tar(entries: list[tuple[str, bytes] | tarfile.TarInfo], *, manifest: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if manifest:
            doc = json.dumps({"name": "evil", "entrypoint": ["true"]}).encode()
            info = tarfile.TarInfo(images.IMAGE_MANIFEST)
            info.size = len(doc)
            tar.addfile(info, io.BytesIO(doc))
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info


CRAFTED: dict[str, list[tuple[str, bytes] | tarfile.TarInfo]] = {
    "absolute path": [("/tmp/flame-evil", b"x")],
    "dot-dot": [("app/../../flame-evil", b"x")],
    "outside app/": [("etc/flame-evil", b"x")],
    "absolute symlink": [_link("app/l", "/etc")],
    "relative symlink out": [_link("app/l", "../../..")],
    "write through a symlink": [
        _link("app/d", "."),
        _link("app/d2", "d/../.."),
        ("app/d2/x", b"x"),
    ],
    "chained symlinks escape": [
        ("app/sub/keep", b""),
        _link("app/sub/x", ".."),
        _link("app/y", "sub/x/../.."),
    ],
    "hard link": [("app/a", b"x"), _link("app/h", "app/a", tarfile.LNKTYPE)],
    "character device": [_special("app/null", tarfile.CHRTYPE)],
    "block device": [_special("app/sda", tarfile.BLKTYPE)],
    "fifo": [_special("app/pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_archives_cannot_escape(case: str, tmp_path: Path) -> None:
    blob = gzip.compress(_tar(CRAFTED[case]), mtime=0)
    repo = ImageRepository(tmp_path / "repo")
    info = repo.put(blob)  # storing is fine: only unpacking writes files
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "inner" / "dest"
    with pytest.raises(UnsafeArchive) as exc_info:
        repo.unpack(info.digest, dest)
    assert exc_info.value.code == "unsafe_archive"
    # Nothing written anywhere but dest, and dest left empty for the caller to remove.
    assert sorted(p.name for p in sandbox.rglob("*")) == ["dest", "inner"]
    assert not Path("/tmp/flame-evil").exists()


# -- serving over HTTP ----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, echo_dir: Path):
    """A repository with the echo image, served by uvicorn on loopback in a thread."""
    import socket
    import threading
    import time

    import uvicorn

    repo = ImageRepository(tmp_path / "origin")
    info = repo.put(build_image(echo_dir)[0], tags=["1.0"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(repo.app(), log_level="warning", lifespan="off", ws="none")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield repo, info, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_pull_from_a_served_repository(served, tmp_path: Path) -> None:
    import httpx

    origin, info, url = served
    listing = httpx.get(f"{url}/v1/images", trust_env=False).json()
    assert [i["digest"] for i in listing] == [info.digest]
    local = ImageRepository(tmp_path / "edge")
    pulled = local.pull(url, info.digest)
    assert pulled.digest == info.digest
    assert local.verify(info.digest).name == "echo"
    with pytest.raises(ImageNotFound, match="answered 404"):
        local.pull(url, "sha256:" + "1" * 64)
    # A blob corrupted at the origin is never served.
    path = origin.blob_path(info.digest)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="answered 409"):
        ImageRepository(tmp_path / "other").pull(url, info.digest)
