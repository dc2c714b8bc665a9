"""SF images and the image repository (SFEMC-6).

An SF image is what the process VIM runs: a compressed tarball holding ``flame-image.json`` (the
normalised manifest: entrypoint, environment, ports, health check, resource needs) and the SF's
directory under ``app/``. It is named by the sha256 of the compressed archive (``sha256:<hex>``).

Building is deterministic: entries sorted, mtimes, owners and modes normalised, compressor
headers without timestamps, so the same directory gives the same digest (with the same
compressor library version). zstd is used when the ``zstandard`` module is importable, gzip
otherwise: images are built once but decompressed on every placement, and zstd decompresses
several times faster at a similar ratio. Both are read back by their magic bytes.

Exceptions (all ``UserError``; the CLI exits 1, an HTTP API answers ``http_status``)::

    ImageError               a bad directory, flag or archive
    ├── ImageNotFound        no image with that digest or name           404
    ├── IntegrityError       the stored bytes no longer hash to the name  409
    └── UnsafeArchive        an entry would escape the tree or is special 422
    ValidationFailed         the manifest has errors, each file:line:col  422
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import ssl
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from flame.common.diagnostics import DiagnosticSink, Position, ValidationFailed
from flame.common.errors import UserError
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlshape import MISSING_KEY, WRONG_SHAPE, as_list, as_map, check_keys
from flame.common.yamlsrc import YMap, YSeq, load_yaml
from flame.sfemc.vim.base import HealthSpec, PortSpec

_zstd: Any
try:  # optional: faster decompression on every placement
    import zstandard as _zstd
except ImportError:  # pragma: no cover - the gzip path is tested by forcing it
    _zstd = None

__all__ = [
    "MANIFEST_FILE",
    "ImageError",
    "ImageInfo",
    "ImageManifest",
    "ImageNotFound",
    "ImageRepository",
    "IntegrityError",
    "UnsafeArchive",
    "build_image",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_FILE = "flame-sf.yaml"  # what the provider writes in the SF directory
IMAGE_MANIFEST = "flame-image.json"  # the normalised manifest inside the archive
APP_PREFIX = "app"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SKIP = frozenset({".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".venv"})

E_MANIFEST_VALUE = "E1001"  # a value of the wrong kind or out of range
E_MANIFEST_ENTRYPOINT = "E1002"  # missing or empty entrypoint


class ImageError(UserError):
    code: ClassVar[str] = "image_error"

    def __init__(self, message: str, /, *, hint: str | None = None, **context: object) -> None:
        # The hint is part of the message a person reads and a field for programs.
        super().__init__(f"{message} (hint: {hint})" if hint else message, hint=hint, **context)


class ImageNotFound(ImageError):
    code: ClassVar[str] = "image_not_found"
    http_status: ClassVar[int] = 404


class IntegrityError(ImageError):
    code: ClassVar[str] = "image_integrity"
    http_status: ClassVar[int] = 409


class UnsafeArchive(ImageError):
    code: ClassVar[str] = "unsafe_archive"
    http_status: ClassVar[int] = 422


# -- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageManifest:
    name: str
    entrypoint: tuple[str, ...]
    version: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortSpec, ...] = ()
    health: HealthSpec | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "entrypoint": list(self.entrypoint),
            "environment": dict(sorted(self.environment.items())),
            "ports": [asdict(p) for p in self.ports],
            "health": asdict(self.health) if self.health else None,
            "resources": {
                "cpus": self.cpus,
                "memory_bytes": self.memory_bytes,
                "disk_bytes": self.disk_bytes,
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageManifest:
        res = doc.get("resources") or {}
        health = doc.get("health")
        return cls(
            name=doc["name"],
            version=doc.get("version"),
            entrypoint=tuple(doc["entrypoint"]),
            environment=dict(doc.get("environment") or {}),
            ports=tuple(PortSpec(**p) for p in doc.get("ports") or ()),
            health=HealthSpec(**health) if health else None,
            cpus=res.get("cpus"),
            memory_bytes=res.get("memory_bytes"),
            disk_bytes=res.get("disk_bytes"),
        )


_TOP_KEYS = ("name", "version", "entrypoint", "environment", "ports", "health", "resources")


def load_manifest(path: Path, *, default_name: str) -> ImageManifest:
    """Read and check ``flame-sf.yaml``; raise ValidationFailed with every located error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read the manifest {path}: {exc}", file=str(path)) from exc
    sink = DiagnosticSink()
    doc = load_yaml(text, str(path), sink)
    manifest = parse_manifest(doc, Position(str(path), 1, 1), sink, default_name=default_name)
    if sink.has_errors() or manifest is None:
        raise ValidationFailed(sink.items)
    return manifest


def parse_manifest(
    doc: Any, pos: Position, sink: DiagnosticSink, *, default_name: str
) -> ImageManifest | None:
    """Check a manifest document (YAML with positions, or plain dicts built from CLI flags)."""
    root = as_map(doc, pos, "the SF manifest", sink)
    if root is None:
        return None
    check_keys(root, _TOP_KEYS, "the SF manifest", sink)
    at = _at(root, pos)

    name = root.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        sink.error(
            E_MANIFEST_VALUE,
            f"image name {name!r} is not a valid name",
            at("name"),
            value=str(name),
            hint="use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    version = root.get("version")
    if version is not None and not isinstance(version, str | int | float):
        sink.error(E_MANIFEST_VALUE, "version must be a string", at("version"))
        version = None

    entrypoint = _entrypoint(root, at, sink)
    environment = _environment(root, at, sink)
    ports = _ports(root, at, sink)
    health = _health(root, at, ports, sink)
    cpus, memory, disk = _resources(root, at, sink)
    if sink.has_errors():
        return None
    return ImageManifest(
        name=str(name),
        version=None if version is None else str(version),
        entrypoint=entrypoint,
        environment=environment,
        ports=ports,
        health=health,
        cpus=cpus,
        memory_bytes=memory,
        disk_bytes=disk,
    )


def _at(m: Mapping[str, Any], default: Position) -> Any:
    def at(key: str) -> Position:
        return m.at(key) if isinstance(m, YMap) else default

    return at


def _entrypoint(root: Mapping[str, Any], at: Any, sink: DiagnosticSink) -> tuple[str, ...]:
    raw = root.get("entrypoint")
    if raw is None:
        sink.error(
            E_MANIFEST_ENTRYPOINT,
            "the SF manifest has no entrypoint: nothing to run",
            at("entrypoint") if "entrypoint" in root else getattr(root, "pos", at("name")),
            hint="add 'entrypoint: [python3, server.py]' (argv, run in the unpacked directory)",
        )
        return ()
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            sink.error(E_MANIFEST_VALUE, f"cannot split the entrypoint: {exc}", at("entrypoint"))
            return ()
    elif isinstance(raw, list) and all(isinstance(a, str | int | float) for a in raw):
        argv = [str(a) for a in raw]
    else:
        sink.error(
            WRONG_SHAPE,
            "entrypoint must be a list of strings (argv) or one command line",
            at("entrypoint"),
            hint="write 'entrypoint: [python3, server.py]'",
        )
        return ()
    if not argv:
        sink.error(E_MANIFEST_ENTRYPOINT, "the entrypoint is empty", at("entrypoint"))
    return tuple(argv)


def _environment(root: Mapping[str, Any], at: Any, sink: DiagnosticSink) -> dict[str, str]:
    env = as_map(root.get("environment"), at("environment"), "environment", sink)
    result: dict[str, str] = {}
    for key, value in (env or {}).items():
        where = env.key_at(key) if isinstance(env, YMap) else at("environment")
        if not _ENV_NAME.match(key) or key.startswith("FLAME_"):
            sink.error(
                E_MANIFEST_VALUE,
                f"environment variable name '{key}' is not allowed",
                where,
                value=key,
                hint="use letters, digits and '_'; FLAME_* names are set by the platform",
            )
        elif isinstance(value, dict | list) or value is None:
            sink.error(E_MANIFEST_VALUE, f"environment '{key}' must be a scalar", where)
        else:
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return result


def _ports(root: Mapping[str, Any], at: Any, sink: DiagnosticSink) -> tuple[PortSpec, ...]:
    seq = as_list(root.get("ports"), at("ports"), "ports", sink)
    ports: list[PortSpec] = []
    for index, raw in enumerate(seq or ()):
        where = seq.at(index) if seq is not None else at("ports")
        item = YMap(where) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            item["port"] = raw  # a bare number is a port
        m = as_map(item, where, "a port", sink)
        if m is None:
            continue
        check_keys(m, ("name", "port", "protocol"), "a port", sink)
        pat = _at(m, where)
        port = m.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            sink.error(
                E_MANIFEST_VALUE,
                f"port must be a number from 1 to 65535, got {port!r}",
                pat("port"),
                hint="the port the SF listens on when FLAME_PORT is not set",
            )
            continue
        name = str(m.get("name") or ("http" if index == 0 else f"port{index}"))
        if any(p.name == name for p in ports):
            sink.error(E_MANIFEST_VALUE, f"two ports are named '{name}'", pat("name"))
            continue
        ports.append(
            PortSpec(name=name, container_port=port, protocol=str(m.get("protocol", "http")))
        )
    return tuple(ports)


def _seconds(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        try:
            seconds = parse_scalar(value, "scalar-unit.time")
        except ScalarError as exc:
            sink.error(E_MANIFEST_VALUE, f"{what}: {exc}", pos, hint=exc.hint)
            return None
    if not seconds > 0:
        sink.error(E_MANIFEST_VALUE, f"{what} must be positive", pos, value=value)
        return None
    return seconds


def _health(
    root: Mapping[str, Any], at: Any, ports: tuple[PortSpec, ...], sink: DiagnosticSink
) -> HealthSpec | None:
    if "health" not in root:
        return None
    raw = root["health"]
    if isinstance(raw, str):  # 'health: /health' is short for {path: /health}
        path_only = YMap(at("health"))
        path_only["path"] = raw
        raw = path_only
    m = as_map(raw, at("health"), "health", sink)
    if m is None:
        return None
    check_keys(m, ("path", "port", "interval", "timeout", "retries"), "health", sink)
    hat = _at(m, at("health"))
    path = m.get("path", "/health")
    if not isinstance(path, str) or not path.startswith("/"):
        sink.error(E_MANIFEST_VALUE, "health path must start with '/'", hat("path"), value=path)
    port = m.get("port")
    if port is not None and str(port) not in {p.name for p in ports}:
        sink.error(
            E_MANIFEST_VALUE,
            f"health port '{port}' is not one of the declared ports",
            hat("port"),
            hint=f"name one of: {', '.join(p.name for p in ports) or '(declare ports first)'}",
        )
    if not ports:
        sink.error(
            MISSING_KEY,
            "a health check needs a port, but the manifest declares none",
            at("health"),
            hint="add 'ports: [{name: http, port: 8080}]'",
        )
    interval = _seconds(m.get("interval", 2.0), hat("interval"), "health interval", sink)
    timeout = _seconds(m.get("timeout", 1.0), hat("timeout"), "health timeout", sink)
    retries = m.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        sink.error(E_MANIFEST_VALUE, "health retries must be a positive integer", hat("retries"))
        retries = 3
    return HealthSpec(
        path=str(path),
        port=None if port is None else str(port),
        interval_s=interval or 2.0,
        timeout_s=timeout or 1.0,
        retries=retries,
    )


def _resources(
    root: Mapping[str, Any], at: Any, sink: DiagnosticSink
) -> tuple[float | None, int | None, int | None]:
    m = as_map(root.get("resources"), at("resources"), "resources", sink)
    if m is None:
        return None, None, None
    check_keys(m, ("cpus", "memory", "disk"), "resources", sink)
    rat = _at(m, at("resources"))
    cpus = m.get("cpus")
    if cpus is not None and (
        isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0
    ):
        sink.error(E_MANIFEST_VALUE, "cpus must be a positive number", rat("cpus"), value=cpus)
        cpus = None
    sizes: list[int | None] = []
    for key in ("memory", "disk"):
        value = m.get(key)
        if value is None:
            sizes.append(None)
            continue
        try:
            size = (
                int(value)
                if isinstance(value, int)
                else int(parse_scalar(value, "scalar-unit.size"))
            )
        except ScalarError as exc:
            sink.error(E_MANIFEST_VALUE, f"{key}: {exc}", rat(key), hint=exc.hint)
            sizes.append(None)
            continue
        if size <= 0:
            sink.error(E_MANIFEST_VALUE, f"{key} must be positive", rat(key), value=value)
        sizes.append(size if size > 0 else None)
    return (None if cpus is None else float(cpus)), sizes[0], sizes[1]


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


def _decompress(blob: bytes, what: str) -> bytes:
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
    default_name = _default_name(name or directory.resolve().name)
    manifest_path = directory / MANIFEST_FILE
    if manifest_path.exists():
        manifest = load_manifest(manifest_path, default_name=default_name)
        if overrides or name:
            merged = {**manifest_as_input(manifest), **(overrides or {})}
            if name:
                merged["name"] = name
            manifest = _from_flags(merged, default_name)
    elif overrides and "entrypoint" in overrides:
        manifest = _from_flags({**({"name": name} if name else {}), **overrides}, default_name)
    else:
        raise ImageError(
            f"{directory} has no {MANIFEST_FILE} and no entrypoint was given",
            hint=f"write {manifest_path} (see docs/sfemc.md) or pass --entrypoint 'python3 server.py'",
        )
    return build_archive(directory, manifest, compression), manifest


def _default_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "sf"
    return name[:63]


def manifest_as_input(m: ImageManifest) -> dict[str, Any]:
    """A manifest back in the input shape, so flags can override single keys."""
    doc: dict[str, Any] = {"name": m.name, "entrypoint": list(m.entrypoint)}
    if m.version is not None:
        doc["version"] = m.version
    if m.environment:
        doc["environment"] = dict(m.environment)
    if m.ports:
        doc["ports"] = [
            {"name": p.name, "port": p.container_port, "protocol": p.protocol} for p in m.ports
        ]
    if m.health:
        doc["health"] = {
            "path": m.health.path,
            "interval": m.health.interval_s,
            "timeout": m.health.timeout_s,
            "retries": m.health.retries,
            **({"port": m.health.port} if m.health.port else {}),
        }
    res = {
        k: v
        for k, v in (("cpus", m.cpus), ("memory", m.memory_bytes), ("disk", m.disk_bytes))
        if v is not None
    }
    if res:
        doc["resources"] = res
    return doc


def _positioned(value: Any, pos: Position) -> Any:
    """Plain dicts and lists (built from flags) as YAML nodes that all point at `pos`."""
    if isinstance(value, Mapping):
        m = YMap(pos)
        for k, v in value.items():
            m[str(k)] = _positioned(v, pos)
        return m
    if isinstance(value, list | tuple):
        seq = YSeq(pos)
        for v in value:
            seq.append(_positioned(v, pos))
        return seq
    return value


def _from_flags(doc: dict[str, Any], default_name: str) -> ImageManifest:
    sink = DiagnosticSink()
    pos = Position("<command-line flags>")
    manifest = parse_manifest(_positioned(doc, pos), pos, sink, default_name=default_name)
    if manifest is None:
        raise ValidationFailed(sink.items)
    return manifest


def digest_of(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# -- the repository ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageInfo:
    digest: str
    name: str
    tags: tuple[str, ...]
    size: int
    created: str  # ISO 8601 UTC, when the repository first stored it
    compression: str
    manifest: ImageManifest

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "name": self.name,
            "tags": list(self.tags),
            "size": self.size,
            "created": self.created,
            "compression": self.compression,
            "manifest": self.manifest.to_json(),
        }


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ImageError(
            f"{digest!r} is not an image digest",
            hint="write 'sha256:' and 64 lowercase hex digits, as `flame images list` shows",
        )
    return digest


class ImageRepository:
    """Images in a directory: ``blobs/<hex>`` (the archive) and ``meta/<hex>.json``.

    Writes go through a temporary file and a rename under a lock file, so concurrent
    `flame package` runs and a crash mid-write never leave a torn or unnamed blob.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._meta = root / "meta"

    # writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, blob: bytes, *, digest: str | None = None, tags: Sequence[str] = ()) -> ImageInfo:
        """Store an archive; `digest`, when given, must match (an upload that was corrupted)."""
        actual = digest_of(blob)
        if digest is not None and check_digest(digest) != actual:
            raise IntegrityError(
                f"the archive hashes to {actual}, not {digest}: it was corrupted or truncated",
                digest=digest,
                actual=actual,
            )
        manifest = self._read_manifest(blob, actual)
        compression = "zstd" if blob.startswith(ZSTD_MAGIC) else "gzip"
        hexd = actual.removeprefix("sha256:")
        with self._locked():
            self._blobs.mkdir(exist_ok=True)
            self._meta.mkdir(exist_ok=True)
            old = self._info_or_none(actual)
            if old is None:
                _atomic_write(self._blobs / hexd, blob)
            info = ImageInfo(
                digest=actual,
                name=manifest.name,
                tags=tuple(sorted(set(old.tags if old else ()) | set(tags))),
                size=len(blob),
                created=old.created if old else _now(),
                compression=compression,
                manifest=manifest,
            )
            # A tag names one image per name: move it off any older image of that name.
            for other in self._all():
                if (
                    other.digest != actual
                    and other.name == info.name
                    and set(other.tags) & set(tags)
                ):
                    self._write_meta(
                        other.digest,
                        {**other.as_dict(), "tags": sorted(set(other.tags) - set(tags))},
                    )
            self._write_meta(actual, info.as_dict())
        return info

    def _write_meta(self, digest: str, doc: dict[str, Any]) -> None:
        path = self._meta / f"{digest.removeprefix('sha256:')}.json"
        _atomic_write(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def _read_manifest(self, blob: bytes, what: str) -> ImageManifest:
        raw = _decompress(blob, what)
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                member = tar.getmember(IMAGE_MANIFEST)
                fh = tar.extractfile(member)
                if fh is None:
                    raise KeyError(IMAGE_MANIFEST)
                return ImageManifest.from_json(json.loads(fh.read()))
        except (KeyError, tarfile.TarError, ValueError, TypeError) as exc:
            raise ImageError(
                f"{what} is not a FLAME SF image (no valid {IMAGE_MANIFEST}): {exc}",
                hint="build images with `flame package DIR`",
            ) from exc

    def delete(self, digest: str, *, in_use: Sequence[str] = ()) -> ImageInfo:
        """Remove an image. `in_use` names the SFEs placed from it: deleting is then refused."""
        info = self.get(digest)
        if in_use:
            raise ImageError(
                f"image {digest} is used by {len(in_use)} endpoint(s): {', '.join(sorted(in_use))}",
                hint="remove those endpoints first (`flame undeploy`), then delete the image",
                in_use=sorted(in_use),
            )
        hexd = info.digest.removeprefix("sha256:")
        with self._locked():
            (self._meta / f"{hexd}.json").unlink(missing_ok=True)
            (self._blobs / hexd).unlink(missing_ok=True)
        return info

    # reading

    def resolve(self, ref: str) -> str:
        """A digest, ``name`` (latest stored) or ``name:tag`` -> digest."""
        if ref.startswith("sha256:"):
            return self.get(check_digest(ref)).digest
        name, _, tag = ref.partition(":")
        found = [i for i in self._all() if i.name == name and (not tag or tag in i.tags)]
        if not found:
            raise ImageNotFound(
                f"no image named {ref!r} in {self.root}",
                hint="`flame images list` shows what is stored; `flame package DIR` adds one",
            )
        return max(found, key=lambda i: i.created).digest

    def get(self, digest: str) -> ImageInfo:
        info = self._info_or_none(check_digest(digest))
        if info is None:
            raise ImageNotFound(
                f"no image {digest} in the repository {self.root}",
                hint="`flame images list` shows what is stored; `flame package DIR` adds one",
                digest=digest,
            )
        return info

    def _info_or_none(self, digest: str) -> ImageInfo | None:
        path = self._meta / f"{digest.removeprefix('sha256:')}.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return ImageInfo(
            digest=doc["digest"],
            name=doc["name"],
            tags=tuple(doc["tags"]),
            size=doc["size"],
            created=doc["created"],
            compression=doc["compression"],
            manifest=ImageManifest.from_json(doc["manifest"]),
        )

    def _all(self) -> list[ImageInfo]:
        if not self._meta.is_dir():
            return []
        infos = (self._info_or_none("sha256:" + p.stem) for p in self._meta.glob("*.json"))
        return [i for i in infos if i is not None]

    def list(self) -> list[ImageInfo]:
        return sorted(self._all(), key=lambda i: (i.name, i.created, i.digest))

    def blob_path(self, digest: str) -> Path:
        return self._blobs / self.get(digest).digest.removeprefix("sha256:")

    def read(self, digest: str) -> bytes:
        """The archive's bytes, re-hashed: integrity is checked on every read."""
        path = self.blob_path(digest)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"image {digest} is listed but its archive {path} is missing",
                hint="delete it with `flame images rm` and package it again",
                digest=digest,
            ) from exc
        actual = digest_of(blob)
        if actual != digest:
            raise IntegrityError(
                f"image {digest} is corrupted: its archive now hashes to {actual}",
                hint="delete it with `flame images rm` and package it again",
                digest=digest,
                actual=actual,
            )
        return blob

    def verify(self, digest: str) -> ImageInfo:
        self.read(digest)
        return self.get(digest)

    def unpack(self, digest: str, dest: Path) -> ImageManifest:
        """Verify, then extract the image's ``app/`` tree into `dest` (created, must be empty).

        The bytes that were hashed are the bytes extracted (no re-read between check and use).
        """
        blob = self.read(digest)
        return unpack_archive(blob, dest, what=digest)

    # -- serving over HTTP ------------------------------------------------------------------

    def app(self) -> Any:
        """A read-only ASGI app serving this repository to other hosts' process VIMs.

        ``GET /v1/images`` lists, ``GET /v1/images/<digest>`` returns the archive (re-hashed
        before it is sent, so a corrupted blob is answered 409, never served).
        """
        from starlette.applications import Starlette  # noqa: PLC0415 - only when serving
        from starlette.requests import Request  # noqa: PLC0415
        from starlette.responses import JSONResponse, Response  # noqa: PLC0415
        from starlette.routing import Route  # noqa: PLC0415

        async def listing(_: Request) -> Response:
            return JSONResponse([i.as_dict() for i in self.list()])

        async def blob(request: Request) -> Response:
            try:
                data = self.read(request.path_params["digest"])
            except ImageError as exc:
                return JSONResponse(exc.as_dict(), status_code=exc.http_status)
            return Response(data, media_type="application/octet-stream")

        return Starlette(routes=[Route("/v1/images", listing), Route("/v1/images/{digest}", blob)])

    def pull(
        self,
        base_url: str,
        digest: str,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        verify: ssl.SSLContext | bool = True,
    ) -> ImageInfo:
        """Fetch an image from another repository's `app()` (or the orchestrator's
        `GET /v1/images/<digest>`, with an operator `token`) unless this one holds it already:
        a local cache. The digest is checked on arrival (`put`), so a corrupted or substituted
        archive is refused (IntegrityError) and never stored. A token goes only over HTTPS
        (`verify`: httpx's) or loopback (`flame.common.tls.require_private_url`)."""
        import httpx  # noqa: PLC0415 - only when pulling

        from flame.common.tls import require_private_url  # noqa: PLC0415

        check_digest(digest)
        require_private_url(base_url, token, what="the image repository")
        if (known := self._info_or_none(digest)) is not None:
            try:
                self.read(digest)  # a cached archive that rotted is fetched again
                return known
            except IntegrityError:
                pass
        url = f"{base_url.rstrip('/')}/v1/images/{digest}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.get(
                url, timeout=timeout_s, trust_env=False, headers=headers, verify=verify
            )
        except httpx.HTTPError as exc:
            raise ImageError(
                f"cannot fetch {url}: {exc}", hint="is the repository served?", url=url
            ) from exc
        if response.status_code != 200:
            kind = {404: ImageNotFound, 409: IntegrityError}.get(response.status_code, ImageError)
            raise kind(
                f"{url} answered {response.status_code}: {response.text[:200]}",
                digest=digest,
                url=url,
                status=response.status_code,
            )
        hexd = digest.removeprefix("sha256:")
        if self._info_or_none(digest) is not None:  # the rotten copy: replaced, not kept
            with self._locked():
                (self._blobs / hexd).unlink(missing_ok=True)
                (self._meta / f"{hexd}.json").unlink(missing_ok=True)
        return self.put(response.content, digest=digest)


def unpack_archive(blob: bytes, dest: Path, *, what: str = "the archive") -> ImageManifest:
    """Extract safely: regular files, directories and in-tree relative symlinks only."""
    raw = _decompress(blob, what)
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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
