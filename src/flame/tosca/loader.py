"""Reading service templates and their imports from files and CSAR archives (never the network).

A file inside a CSAR is named `archive.csar!path/inside.yaml` in diagnostics, so positions stay
precise through archives.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, kind_of
from flame.common.yamlsrc import YMap, YSeq, load_yaml
from flame.tosca import codes

SUPPORTED_VERSIONS = (
    "tosca_simple_yaml_1_0",
    "tosca_simple_yaml_1_1",
    "tosca_simple_yaml_1_2",
    "tosca_simple_yaml_1_3",
    "tosca_simple_profile_for_nfv_1_0_0",
)
TEMPLATE_KEYS = {
    "tosca_definitions_version",
    "namespace",
    "metadata",
    "description",
    "dsl_definitions",
    "repositories",
    "imports",
    "artifact_types",
    "data_types",
    "capability_types",
    "interface_types",
    "relationship_types",
    "node_types",
    "group_types",
    "policy_types",
    "topology_template",
    # TOSCA 1.0 put these at the top level; 1.3 moved them into metadata.
    "template_name",
    "template_author",
    "template_version",
}
IMPORT_KEYS = {"file", "repository", "namespace_prefix", "namespace_uri"}
# Imports naming the original FLAME profile files resolve to our built-in profile when absent.
_BUILTIN_IMPORT = re.compile(
    r"^flame[_-](definitions|clmc_alerts_definitions|profile)[-_.\w]*\.ya?ml$"
)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(slots=True)
class Document:
    """One parsed YAML file: a service template, or a file of definitions it imports."""

    name: str  # the name used in positions
    root: YMap
    imported: bool = False
    imports: list[Document] = field(default_factory=list)


# A CSAR holds templates, a few kB each: a member inflating past this is a zip bomb, not a
# service, and is refused before it fills memory (the header's sizes are not trusted).
MAX_MEMBER_BYTES = 16 << 20
MAX_ARCHIVE_BYTES = 64 << 20


class ArchiveTooLarge(Exception):
    pass


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self._inflated = 0

    def read(self, inner: str) -> str:
        return self.read_bytes(inner).decode("utf-8")

    def read_bytes(self, inner: str) -> bytes:
        """The member's bytes, read in bounded steps: ArchiveTooLarge past the limits."""
        limit = min(MAX_MEMBER_BYTES, MAX_ARCHIVE_BYTES - self._inflated)
        with self.zip.open(inner) as member:
            data = member.read(limit + 1)
        if len(data) > limit:
            raise ArchiveTooLarge(
                f"member '{inner}' inflates to more than {limit >> 20} MiB "
                f"(limits: {MAX_MEMBER_BYTES >> 20} MiB a member, {MAX_ARCHIVE_BYTES >> 20} MiB "
                "an archive)"
            )
        self._inflated += len(data)
        return data

    def exists(self, inner: str) -> bool:
        try:
            self.zip.getinfo(inner)
        except KeyError:
            return False
        return True


@dataclass(slots=True)
class _Origin:
    """Where a document lives, so that its relative imports resolve next to it."""

    path: Path  # on disk: the file; in an archive: the archive
    inner: str | None = None  # path inside the archive
    archive: _Archive | None = None


def builtin_text(name: str) -> str:
    return (resources.files("flame.tosca") / "data" / name).read_text(encoding="utf-8")


class Loader:
    def __init__(self, sink: DiagnosticSink) -> None:
        self.sink = sink
        self._loaded: dict[str, Document] = {}

    def load(self, path: str | Path) -> Document | None:
        p = Path(path)
        if not p.exists():
            self.sink.error(
                codes.FILE_UNREADABLE,
                f"no such file: {p}",
                Position(str(p)),
                hint="check the path and the current directory",
            )
            return None
        if p.is_dir():
            self.sink.error(
                codes.FILE_UNREADABLE, f"{p} is a directory, not a template", Position(str(p))
            )
            return None
        if zipfile.is_zipfile(p):
            return self._load_csar(p)
        if p.suffix.lower() in (".csar", ".zip"):
            self.sink.error(
                codes.CSAR_INVALID,
                f"{p} is named like a CSAR archive but is not a zip file",
                Position(str(p)),
                hint="build CSARs with zip (TOSCA-Metadata/TOSCA.meta plus the templates)",
            )
            return None
        return self._load_file(_Origin(p), Position(str(p)), imported=False)

    # -- sources ---------------------------------------------------------------------------

    def _display(self, origin: _Origin) -> str:
        if origin.inner is not None:
            return f"{origin.path}!{origin.inner}"
        return str(origin.path)

    def _load_csar(self, path: Path) -> Document | None:
        try:
            archive = _Archive(path)
        except (zipfile.BadZipFile, OSError) as exc:
            self.sink.error(
                codes.CSAR_INVALID, f"cannot open CSAR archive: {exc}", Position(str(path))
            )
            return None
        entry: str | None = None
        if archive.exists("TOSCA-Metadata/TOSCA.meta"):
            try:
                meta = archive.read("TOSCA-Metadata/TOSCA.meta")
            except (ArchiveTooLarge, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
                self.sink.error(
                    codes.CSAR_INVALID,
                    f"cannot read TOSCA-Metadata/TOSCA.meta: {exc}",
                    Position(str(path)),
                )
                return None
            for number, line in enumerate(meta.splitlines(), start=1):
                key, _, value = line.partition(":")
                if key.strip() in ("Entry-Definitions", "Entry-Definition"):
                    entry = value.strip()
                    if not archive.exists(entry):
                        self.sink.error(
                            codes.CSAR_INVALID,
                            f"Entry-Definitions names '{entry}', which is not in the archive",
                            Position(
                                f"{path}!TOSCA-Metadata/TOSCA.meta", number, line.index(entry) + 1
                            ),
                            value=entry,
                            hint=did_you_mean(entry, archive.zip.namelist()),
                        )
                        return None
        if entry is None:
            roots = [
                n for n in archive.zip.namelist() if "/" not in n and n.endswith((".yaml", ".yml"))
            ]
            if len(roots) != 1:
                self.sink.error(
                    codes.CSAR_INVALID,
                    "CSAR has no TOSCA-Metadata/TOSCA.meta with Entry-Definitions and "
                    f"{'no' if not roots else 'more than one'} YAML file at its root",
                    Position(str(path)),
                    hint="add TOSCA-Metadata/TOSCA.meta with 'Entry-Definitions: <file>'",
                )
                return None
            entry = roots[0]
        return self._load_file(_Origin(path, entry, archive), Position(str(path)), imported=False)

    def _read(self, origin: _Origin, where: Position) -> str | None:
        try:
            if origin.archive is not None and origin.inner is not None:
                data = origin.archive.read_bytes(origin.inner)
            else:
                data = origin.path.read_bytes()
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = exc.object[: exc.start]
            line_start = before.rfind(b"\n") + 1
            column = len(before[line_start:].decode("utf-8", errors="replace")) + 1
            self.sink.error(
                codes.FILE_UNREADABLE,
                f"{self._display(origin)} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} "
                "cannot be decoded",
                Position(self._display(origin), before.count(b"\n") + 1, column),
                hint="save the file as UTF-8",
            )
        except (OSError, KeyError, ArchiveTooLarge, zipfile.BadZipFile) as exc:
            self.sink.error(
                codes.FILE_UNREADABLE, f"cannot read {self._display(origin)}: {exc}", where
            )
        return None

    def _load_file(self, origin: _Origin, where: Position, *, imported: bool) -> Document | None:
        name = self._display(origin)
        if name in self._loaded:
            return self._loaded[name]
        text = self._read(origin, where)
        if text is None:
            return None
        return self._parse(text, name, origin, imported)

    def _parse(
        self, text: str, name: str, origin: _Origin | None, imported: bool
    ) -> Document | None:
        root: Any = load_yaml(text, name, self.sink)
        if root is None:
            if not self.sink.has_errors():
                self.sink.error(codes.NOT_A_MAPPING, "the file is empty", Position(name, 1, 1))
            return None
        if not isinstance(root, YMap):
            self.sink.error(
                codes.NOT_A_MAPPING,
                f"a service template must be a mapping, got {kind_of(root)}",
                root.pos if isinstance(root, YSeq) else Position(name, 1, 1),
                hint="start with 'tosca_definitions_version: tosca_simple_yaml_1_3'",
            )
            return None
        doc = Document(name, root, imported)
        self._loaded[name] = doc
        check_keys(root, TEMPLATE_KEYS, "a service template", self.sink)
        if "metadata" in root:
            as_map(root["metadata"], root.at("metadata"), "metadata", self.sink)
        self._check_version(root, name)
        if "imports" in root:
            self._imports(doc, origin)
        return doc

    def _check_version(self, root: YMap, name: str) -> None:
        version = root.get("tosca_definitions_version")
        if version is None:
            self.sink.error(
                codes.BAD_DEFINITIONS_VERSION,
                "missing tosca_definitions_version",
                Position(name, 1, 1),
                hint="add 'tosca_definitions_version: tosca_simple_yaml_1_3' as the first line",
            )
        elif version not in SUPPORTED_VERSIONS:
            self.sink.error(
                codes.BAD_DEFINITIONS_VERSION,
                f"unsupported tosca_definitions_version '{version}'",
                root.at("tosca_definitions_version"),
                value=version,
                hint=did_you_mean(version, SUPPORTED_VERSIONS)
                or f"use one of {', '.join(SUPPORTED_VERSIONS)}",
            )

    # -- imports ---------------------------------------------------------------------------

    def _imports(self, doc: Document, origin: _Origin | None) -> None:
        seq = as_list(doc.root["imports"], doc.root.at("imports"), "imports", self.sink)
        if seq is None:
            return
        for index, raw in enumerate(seq):
            pos = seq.at(index)
            spec: Any = raw
            if isinstance(spec, YMap) and "file" not in spec and len(spec) == 1:
                # TOSCA 1.0 named imports: "- name: path" or "- name: {file: path}"
                spec = next(iter(spec.values()))
            target: Any = spec
            if isinstance(spec, YMap):
                check_keys(spec, IMPORT_KEYS, "an import", self.sink)
                if "repository" in spec:
                    self.sink.error(
                        codes.IMPORT_NETWORK,
                        "imports from repositories would fetch over the network, which FLAME never does",
                        spec.at("repository"),
                        value=spec["repository"],
                        hint="download the file, put it next to the template and import it by relative path",
                    )
                    continue
                target = spec.get("file")
                pos = spec.at("file")
            if not isinstance(target, str) or not target:
                self.sink.error(
                    codes.WRONG_SHAPE, "an import must name a file", pos, hint="- definitions.yaml"
                )
                continue
            if _URL.match(target):
                self.sink.error(
                    codes.IMPORT_NETWORK,
                    f"import '{target}' is a URL; FLAME does not fetch templates over the network",
                    pos,
                    value=target,
                    hint="download the file and import it by relative path",
                )
                continue
            imported = self._resolve_import(origin, target, pos)
            if imported is not None:
                doc.imports.append(imported)

    def _resolve_import(
        self, origin: _Origin | None, target: str, pos: Position
    ) -> Document | None:
        candidates: list[str] = []
        own = ""
        if origin is None:
            pass  # uploaded text: only the built-in profile can be imported
        elif origin.archive is not None and origin.inner is not None:
            inner = posixpath.normpath(posixpath.join(posixpath.dirname(origin.inner), target))
            if origin.archive.exists(inner):
                return self._load_file(
                    _Origin(origin.path, inner, origin.archive), pos, imported=True
                )
            here = posixpath.dirname(origin.inner)
            own = posixpath.relpath(origin.inner, here or ".")
            candidates = [
                posixpath.relpath(n, here or ".")
                for n in origin.archive.zip.namelist()
                if not n.endswith("/")
            ]
        else:
            path = (origin.path.parent / target).resolve()
            if path.is_file():
                return self._load_file(_Origin(path), pos, imported=True)
            parent = origin.path.parent
            own = origin.path.name
            candidates = _nearby_templates(parent)
        if _BUILTIN_IMPORT.match(posixpath.basename(target)):
            return None  # the FLAME profile is built in
        self.sink.error(
            codes.IMPORT_NOT_FOUND,
            f"imported file '{target}' not found",
            pos,
            value=target,
            hint=did_you_mean(target, [c for c in candidates if c != own], dotted=False)
            or (
                "imports are relative to the importing file"
                if origin is not None
                else "an uploaded template cannot import files; upload a CSAR archive instead"
            ),
        )
        return None

    def load_text(self, text: str, name: str) -> Document | None:
        """A template received as text (an upload); it has no directory to import from."""
        return self._parse(text, name, None, imported=False)

    def parse_builtin(self, name: str) -> Document | None:
        return self._parse(builtin_text(name), f"<builtin>/{name}", None, imported=True)


def _nearby_templates(directory: Path, limit: int = 500) -> list[str]:
    """YAML files under `directory`, relative to it: candidates for a did-you-mean hint."""
    found: list[str] = []
    for pattern in ("*.yaml", "*.yml"):
        for path in directory.rglob(pattern):
            found.append(path.relative_to(directory).as_posix())
            if len(found) >= limit:
                return found
    return found
