"""The SF manifest (`flame-sf.yaml`): parsed with every problem located file:line:col, and
normalised into `ImageManifest`, the manifest inside an image."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position, ValidationFailed
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlshape import MISSING_KEY, WRONG_SHAPE, as_list, as_map, check_keys
from flame.common.yamlsrc import YMap, YSeq, load_yaml
from flame.sfemc.images.errors import ImageError
from flame.sfemc.vim.base import HealthSpec, PortSpec

MANIFEST_FILE = "flame-sf.yaml"  # what the provider writes in the SF directory
IMAGE_MANIFEST = "flame-image.json"  # the normalised manifest inside the archive
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
E_MANIFEST_VALUE = "E1001"  # a value of the wrong kind or out of range
E_MANIFEST_ENTRYPOINT = "E1002"  # missing or empty entrypoint


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
    wheels: str | None = None  # the image's wheelhouse (relative to app/): its own packages
    container_image: str | None = None  # what the Kubernetes VIM runs instead (registry/x:tag)
    # Serves HTTPS (mutual TLS) on its ports when given FLAME_TLS_CERT/KEY/CA: the SFEMC hands
    # it a platform endpoint certificate when the operator enabled hop-by-hop TLS (docs/tls.md).
    tls: bool = False

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
            **({"python": {"wheels": self.wheels}} if self.wheels else {}),
            **({"container_image": self.container_image} if self.container_image else {}),
            **({"tls": True} if self.tls else {}),  # absent when false: digests as before
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
            wheels=(doc.get("python") or {}).get("wheels"),
            container_image=doc.get("container_image"),
            tls=doc.get("tls") is True,
        )


_TOP_KEYS = (
    "name",
    "version",
    "entrypoint",
    "environment",
    "ports",
    "health",
    "resources",
    "python",
    "container_image",
    "tls",
)


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
    wheels = _wheels(root, at, sink)
    container_image = _container_image(root, at, sink)
    tls = root.get("tls", False)
    if not isinstance(tls, bool):
        sink.error(
            E_MANIFEST_VALUE,
            f"tls must be true or false, got {tls!r}",
            at("tls"),
            hint="tls: true if the SF serves HTTPS given FLAME_TLS_CERT/KEY/CA (docs/tls.md)",
        )
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
        wheels=wheels,
        container_image=container_image,
        tls=tls is True,
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


def _wheels(root: Mapping[str, Any], at: Any, sink: DiagnosticSink) -> str | None:
    """`python: {wheels: DIR}`: a directory of the image holding the SF's wheels."""
    if root.get("python") is None:
        return None
    m = as_map(root.get("python"), at("python"), "python", sink)
    if m is None:
        return None
    check_keys(m, ("wheels",), "python", sink)
    value = m.get("wheels")
    if value is None:
        sink.error(MISSING_KEY, "python needs 'wheels' (the wheelhouse directory)", at("python"))
        return None
    path = str(value).strip().rstrip("/")
    if not path or path.startswith("/") or ".." in Path(path).parts:
        sink.error(
            E_MANIFEST_VALUE,
            f"wheels: {value!r} must be a directory inside the SF's directory",
            _at(m, at("python"))("wheels"),
            hint="e.g. `wheels: wheelhouse` after `pip wheel -r requirements.txt -w wheelhouse`",
        )
        return None
    return path


def _container_image(root: Mapping[str, Any], at: Any, sink: DiagnosticSink) -> str | None:
    """`container_image: registry/x:tag`: what a Kubernetes cluster runs for this image."""
    value = root.get("container_image")
    if value is None:
        return None
    text = str(value)
    if not text or len(text) > 255 or any(c.isspace() for c in text) or text.startswith("sha256:"):
        sink.error(
            E_MANIFEST_VALUE,
            f"container_image: {value!r} is not a container image reference",
            at("container_image"),
            hint="e.g. registry.example/team/echo:1.0 (or ...@sha256:<digest>)",
        )
        return None
    return text


def default_image_name(text: str) -> str:
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
    if m.wheels:
        doc["python"] = {"wheels": m.wheels}
    if m.container_image:
        doc["container_image"] = m.container_image
    if m.tls:
        doc["tls"] = True
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


def manifest_from_flags(doc: dict[str, Any], default_name: str) -> ImageManifest:
    sink = DiagnosticSink()
    pos = Position("<command-line flags>")
    manifest = parse_manifest(_positioned(doc, pos), pos, sink, default_name=default_name)
    if manifest is None:
        raise ValidationFailed(sink.items)
    return manifest
