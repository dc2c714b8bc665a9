"""Building an SF image (a deterministic, compressed tarball of the SF directory and its
normalised manifest) and unpacking one safely."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from flame.sfemc.images.deps import check_wheelhouse
from flame.sfemc.images.errors import ImageError, UnsafeArchive
from flame.sfemc.images.manifest import (
    IMAGE_MANIFEST,
    MANIFEST_FILE,
    ImageManifest,
    default_image_name,
    load_manifest,
    manifest_as_input,
    manifest_from_flags,
)

_zstd: Any
try:  # optional: faster decompression on every placement
    import zstandard as _zstd
except ImportError:  # pragma: no cover - the gzip path is tested by forcing it
    _zstd = None

APP_PREFIX = "app"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_SKIP = frozenset({".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".venv"})


# -- building ------------------------------------------------------------------------------------


def _compressor() -> str:
    return "zstd" if _zstd is not None else "gzip"


def _compress(data: bytes, kind: str) -> bytes:
    if kind == "zstd":
        if _zstd is None:
            raise ImageError(
                "zstd compression needs the 'zstandard' package", hint="pip install zstandard"
            )
        # No content size or checksum variation: the frame depends only on the data and level.
        return bytes(_zstd.ZstdCompressor(level=10, write_content_size=True).compress(data))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def decompress(blob: bytes, what: str) -> bytes:
    if blob.startswith(ZSTD_MAGIC):
        if _zstd is None:
            raise ImageError(
                f"{what} is zstd-compressed but the 'zstandard' package is not installed",
                hint="pip install zstandard",
            )
        try:
            return bytes(_zstd.ZstdDecompressor().decompress(blob, max_output_size=1 << 34))
        except _zstd.ZstdError as exc:
            raise UnsafeArchive(f"{what}: corrupt zstd data: {exc}") from exc
    if blob.startswith(GZIP_MAGIC):
        try:
            return gzip.decompress(blob)
        except (OSError, EOFError) as exc:
            raise UnsafeArchive(f"{what}: corrupt gzip data: {exc}") from exc
    raise UnsafeArchive(f"{what} is neither a zstd nor a gzip archive")


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = 0  # fixed: the digest must not depend on when files were touched
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _walk(root: Path) -> Iterator[Path]:
    """Every path under root in a stable order, skipping caches and VCS directories."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        base = Path(dirpath)
        for name in sorted(dirnames + [f for f in filenames if not f.endswith(".pyc")]):
            yield base / name


def build_archive(
    directory: Path, manifest: ImageManifest, compression: str | None = None
) -> bytes:
    """The compressed image archive for `directory`; deterministic."""
    root = directory.resolve()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        doc = json.dumps(manifest.to_json(), sort_keys=True, indent=1).encode()
        tar.addfile(_tarinfo(IMAGE_MANIFEST, tarfile.REGTYPE, 0o644, len(doc)), io.BytesIO(doc))
        tar.addfile(_tarinfo(APP_PREFIX, tarfile.DIRTYPE, 0o755))
        for path in sorted(_walk(root), key=lambda p: p.relative_to(root).as_posix()):
            rel = path.relative_to(root).as_posix()
            name = f"{APP_PREFIX}/{rel}"
            st = path.lstat()
            # Keep only the executable bit: the image must not depend on the packager's umask.
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if os.path.isabs(target) or not _inside(root, path.parent / target):
                    raise ImageError(
                        f"{path}: symbolic link to {target!r} points outside {directory}",
                        hint="copy the target into the directory or make the link relative",
                    )
                tar.addfile(_tarinfo(name, tarfile.SYMTYPE, 0o777, link=target))
            elif stat.S_ISDIR(st.st_mode):
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
            elif stat.S_ISREG(st.st_mode):
                with path.open("rb") as fh:
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, mode, st.st_size), fh)
            else:
                raise ImageError(
                    f"{path}: not a regular file, directory or symbolic link",
                    hint="remove sockets, pipes and device files from the SF directory",
                )
    return _compress(raw.getvalue(), compression or _compressor())


def _inside(root: Path, candidate: Path) -> bool:
    return os.path.normpath(candidate).startswith(str(root) + os.sep) or os.path.normpath(
        candidate
    ) == str(root)


def build_image(
    directory: Path,
    *,
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> tuple[bytes, ImageManifest]:
    """Archive `directory` with its manifest (``flame-sf.yaml``, then `overrides` from flags)."""
    if not directory.is_dir():
        raise ImageError(
            f"{directory} is not a directory",
            hint="give the SF's directory, which holds flame-sf.yaml and its files",
        )
    default_name = default_image_name(name or directory.resolve().name)
    manifest_path = directory / MANIFEST_FILE
    if manifest_path.exists():
        manifest = load_manifest(manifest_path, default_name=default_name)
        if overrides or name:
            merged = {**manifest_as_input(manifest), **(overrides or {})}
            if name:
                merged["name"] = name
            manifest = manifest_from_flags(merged, default_name)
    elif overrides and "entrypoint" in overrides:
        manifest = manifest_from_flags(
            {**({"name": name} if name else {}), **overrides}, default_name
        )
    else:
        raise ImageError(
            f"{directory} has no {MANIFEST_FILE} and no entrypoint was given",
            hint=f"write {manifest_path} (see docs/sfemc.md) or pass --entrypoint 'python3 server.py'",
        )
    check_wheelhouse(directory, manifest)
    return build_archive(directory, manifest, compression), manifest


def digest_of(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def unpack_archive(blob: bytes, dest: Path, *, what: str = "the archive") -> ImageManifest:
    """Extract safely: regular files, directories and in-tree relative symlinks only."""
    raw = decompress(blob, what)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ImageError(f"cannot unpack {what} into {dest}: the directory is not empty")
    root = dest.resolve()
    manifest: ImageManifest | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if member.name == IMAGE_MANIFEST and member.isfile():
                    fh = tar.extractfile(member)
                    manifest = ImageManifest.from_json(json.loads(fh.read())) if fh else None
                    continue
                _extract_member(tar, member, root, what)
        if manifest is None:
            raise UnsafeArchive(f"{what} has no {IMAGE_MANIFEST}")
        _check_links(root, what)
    except BaseException:
        # Leave nothing half-extracted (or planted) behind for a later placement to run.
        _empty(root)
        raise
    return manifest


def _check_links(root: Path, what: str) -> None:
    """Links checked one by one can still escape together (a -> b/.., b -> ..): resolve all."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not _inside(root, Path(os.path.realpath(path))):
                rel = path.relative_to(root)
                raise UnsafeArchive(
                    f"{what}: symbolic link {rel} resolves outside the tree", entry=str(rel)
                )


def _empty(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, what: str) -> None:
    rel = PurePosixPath(member.name)
    parts = rel.parts
    if rel.is_absolute() or ".." in parts or not parts or parts[0] != APP_PREFIX:
        raise UnsafeArchive(
            f"{what}: entry {member.name!r} would be written outside the image tree",
            entry=member.name,
        )
    if len(parts) == 1:
        return  # the app/ directory itself
    target = root.joinpath(*parts[1:])
    # A parent may be a symlink planted by an earlier entry: resolve it and check again.
    parent = target.parent.resolve()
    if not _inside(root, parent):
        raise UnsafeArchive(
            f"{what}: entry {member.name!r} goes through a symbolic link out of the tree",
            entry=member.name,
        )
    if member.isdir():
        parent.mkdir(parents=True, exist_ok=True)
        (parent / target.name).mkdir(mode=0o755, exist_ok=True)
    elif member.isfile():
        fh = tar.extractfile(member)
        if fh is None:
            raise UnsafeArchive(f"{what}: entry {member.name!r} has no data", entry=member.name)
        parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(parent / target.name, flags, 0o755 if member.mode & 0o111 else 0o644)
        with os.fdopen(fd, "wb") as out:
            while chunk := fh.read(1 << 20):
                out.write(chunk)
    elif member.issym():
        link = member.linkname
        if os.path.isabs(link) or not _inside(root, Path(os.path.normpath(parent / link))):
            raise UnsafeArchive(
                f"{what}: symbolic link {member.name!r} -> {link!r} points out of the tree",
                entry=member.name,
            )
        os.symlink(link, parent / target.name)
    else:
        kind = "hard link" if member.islnk() else "device or special file"
        raise UnsafeArchive(
            f"{what}: entry {member.name!r} is a {kind}, which SF images may not contain",
            entry=member.name,
        )
