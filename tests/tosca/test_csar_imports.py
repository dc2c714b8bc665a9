"""Imports and CSAR archives: files are read from disk or the archive, never from the network."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from flame.common.diagnostics import Diagnostic, Severity
from flame.tosca.validator import ValidationResult, validate, validate_texts

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TEXT = (REPO / "examples" / "vod-edge-cache" / "service.yaml").read_text(encoding="utf-8")
HEADER = "tosca_definitions_version: tosca_simple_yaml_1_3\n"

# A node type derived from the FLAME ServiceFunction, used by the template below.
CACHE_TYPES = (
    HEADER
    + """\
node_types:
  acme.nodes.Cache:
    derived_from: eu.ict-flame.nodes.ServiceFunction
    properties:
      cache_size:
        type: scalar-unit.size
        default: 1 GB
"""
)


def service_importing(*imports: str, cache_type: str = "acme.nodes.Cache") -> str:
    """The VoD example with `imports:` and its cache node using `cache_type`."""
    text = EXAMPLE_TEXT
    if imports:
        listed = "".join(f"  - {i}\n" for i in imports)
        text = text.replace("metadata:", f"imports:\n{listed}metadata:", 1)
    text = text.replace(
        "    cache:\n      type: eu.ict-flame.nodes.ServiceFunction\n      properties:\n",
        f"    cache:\n      type: {cache_type}\n      properties:\n        cache_size: 2 GB\n",
    )
    assert cache_type in text
    return text


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def codes(result: ValidationResult) -> list[str]:
    return [d.code for d in result.diagnostics]


def only(result: ValidationResult, code: str) -> Diagnostic:
    found = [d for d in result.diagnostics if d.code == code]
    assert len(found) == 1, result.diagnostics
    return found[0]


def make_csar(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def meta(entry: str, *, before: str = "") -> str:
    return (
        "TOSCA-Meta-File-Version: 1.1\n"
        "CSAR-Version: 1.1\n"
        "Created-By: tests\n"
        f"{before}"
        f"Entry-Definitions: {entry}\n"
    )


# -- relative imports ---------------------------------------------------------------------------


def test_imported_types_from_nested_directories_are_used(tmp_path: Path) -> None:
    write(tmp_path / "defs" / "nested" / "cache.yaml", CACHE_TYPES)
    write(tmp_path / "defs" / "all.yaml", HEADER + "imports:\n  - nested/cache.yaml\n")
    svc = write(tmp_path / "svc.yaml", service_importing("defs/all.yaml"))
    result = validate([svc])
    assert result.ok, result.diagnostics
    assert result.model is not None
    assert sorted(sf.name for sf in result.model.service_functions) == ["cache", "origin"]


def test_without_the_import_the_type_is_unknown(tmp_path: Path) -> None:
    svc = write(tmp_path / "svc.yaml", service_importing())
    result = validate([svc])
    assert not result.ok
    assert only(result, "E300").position.line == line_of(svc.read_text(), "type: acme.nodes.Cache")


def test_imported_property_definitions_are_enforced(tmp_path: Path) -> None:
    write(tmp_path / "types.yaml", CACHE_TYPES)
    text = service_importing("types.yaml").replace("cache_size: 2 GB", "cache_size: 2 parsecs")
    svc = write(tmp_path / "svc.yaml", text)
    result = validate([svc])
    error = only(result, "E404")
    assert error.position.file == str(svc)
    assert error.position.line == line_of(text, "2 parsecs")


def test_errors_in_an_imported_file_are_located_in_that_file(tmp_path: Path) -> None:
    types = write(
        tmp_path / "lib" / "types.yaml",
        CACHE_TYPES.replace(
            "derived_from: eu.ict-flame.nodes.ServiceFunction", "derived_from: x.Nope"
        ),
    )
    svc = write(tmp_path / "svc.yaml", service_importing("lib/types.yaml"))
    result = validate([svc])
    assert not result.ok
    in_types = [d for d in result.errors if d.position.file == str(types)]
    assert in_types, result.diagnostics
    assert in_types[0].code == "E300"
    assert in_types[0].position.line == line_of(types.read_text(), "x.Nope")


def test_import_cycle_terminates_without_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CACHE_TYPES + "imports:\n  - b.yaml\n")
    write(
        tmp_path / "b.yaml",
        HEADER + "imports:\n  - a.yaml\ndata_types:\n  acme.datatypes.Empty:\n"
        "    derived_from: tosca.datatypes.Root\n",
    )
    svc = write(tmp_path / "svc.yaml", service_importing("a.yaml"))
    result = validate([svc])
    assert result.ok, result.diagnostics
    assert result.model is not None


def test_self_import_terminates(tmp_path: Path) -> None:
    svc = write(tmp_path / "svc.yaml", service_importing("types.yaml", "svc.yaml"))
    write(tmp_path / "types.yaml", CACHE_TYPES)
    result = validate([svc])
    assert result.ok, result.diagnostics


def test_missing_import_with_near_miss_name_hints_at_it(tmp_path: Path) -> None:
    write(tmp_path / "cache_types.yaml", CACHE_TYPES)
    text = service_importing("cache_tpyes.yaml")
    svc = write(tmp_path / "svc.yaml", text)
    result = validate([svc])
    error = only(result, "E103")
    assert error.position.file == str(svc)
    assert error.position.line == line_of(text, "- cache_tpyes.yaml")
    assert error.position.column == 5
    assert error.value == "cache_tpyes.yaml"
    assert error.hint is not None
    assert "cache_types.yaml" in error.hint


def test_missing_import_without_near_miss_explains_relative_paths(tmp_path: Path) -> None:
    svc = write(tmp_path / "svc.yaml", service_importing("vendor/definitions"))
    error = only(validate([svc]), "E103")
    assert error.hint is not None
    assert "relative" in error.hint


@pytest.mark.parametrize("target", ["vendor/acme-definitions.yaml", "zzz/qqq.yml"])
def test_missing_import_hint_does_not_suggest_an_unrelated_file(
    tmp_path: Path, target: str
) -> None:
    # Regression: did_you_mean compared the last dotted segment (meant for type names), i.e. the
    # extension, so every missing *.yaml import was "did you mean 'svc.yaml'?".
    svc = write(tmp_path / "svc.yaml", service_importing(target))
    error = only(validate([svc]), "E103")
    assert error.hint is not None
    assert "svc.yaml" not in error.hint
    assert "relative" in error.hint


def test_import_with_file_key_and_named_import(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "types.yaml", CACHE_TYPES)
    svc = write(tmp_path / "svc.yaml", service_importing("{file: sub/types.yaml}"))
    assert validate([svc]).ok
    svc = write(tmp_path / "svc2.yaml", service_importing("{cache_defs: sub/types.yaml}"))
    assert validate([svc]).ok


@pytest.mark.parametrize(
    "target",
    [
        "https://example.com/types.yaml",
        "http://example.com/types.yaml",
        "file:///etc/types.yaml",
        "{file: 'https://example.com/types.yaml'}",
    ],
)
def test_url_import_is_refused(tmp_path: Path, target: str) -> None:
    text = service_importing(target, cache_type="eu.ict-flame.nodes.ServiceFunction")
    text = text.replace("        cache_size: 2 GB\n", "")
    svc = write(tmp_path / "svc.yaml", text)
    result = validate([svc])
    error = only(result, "E104")
    assert error.position.file == str(svc)
    assert error.position.line == line_of(text, "example.com" if "example" in target else "file:")
    assert "URL" in error.message
    assert codes(result) == ["E104"]


def test_repository_import_is_refused(tmp_path: Path) -> None:
    text = service_importing("{file: types.yaml, repository: acme}")
    text = text.replace(
        "imports:",
        "repositories:\n  acme: {url: 'https://example.com/tosca'}\nimports:",
        1,
    )
    write(tmp_path / "types.yaml", CACHE_TYPES)
    svc = write(tmp_path / "svc.yaml", text)
    result = validate([svc])
    error = only(result, "E104")
    assert error.position.line == line_of(text, "repository: acme")
    assert error.value == "acme"
    # The import is refused, not half-followed: the local types.yaml was not read.
    assert "E300" in codes(result)


def test_builtin_profile_import_resolves_without_the_file(tmp_path: Path) -> None:
    text = service_importing(
        "flame_definitions-0.1.2.yaml", cache_type="eu.ict-flame.nodes.ServiceFunction"
    ).replace("        cache_size: 2 GB\n", "")
    svc = write(tmp_path / "svc.yaml", text)
    result = validate([svc])
    assert result.ok, result.diagnostics
    assert result.diagnostics == []
    # ...and as an upload, which cannot import anything else.
    assert validate_texts({"svc.yaml": text}).ok


def test_builtin_like_name_that_is_not_flame_is_still_missing(tmp_path: Path) -> None:
    svc = write(tmp_path / "svc.yaml", service_importing("flamingo_definitions-0.1.2.yaml"))
    assert "E103" in codes(validate([svc]))


def test_uploaded_text_cannot_import_relative_files() -> None:
    text = service_importing("types.yaml")
    result = validate_texts({"upload.yaml": text})
    error = only(result, "E103")
    assert error.position.file == "upload.yaml"
    assert error.position.line == line_of(text, "- types.yaml")
    assert error.hint is not None
    assert "CSAR" in error.hint


# -- CSAR archives --------------------------------------------------------------------------------


def test_csar_with_tosca_meta_entry_definitions(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "vod.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("Definitions/service.yaml"),
            "Definitions/service.yaml": EXAMPLE_TEXT,
            # A second root-level YAML file would make a meta-less archive ambiguous.
            "other.yaml": HEADER,
        },
    )
    result = validate([csar])
    assert result.ok, result.diagnostics
    assert result.model is not None
    assert result.model.sfc == "vod"


def test_csar_without_meta_uses_the_single_root_yaml(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "vod.csar",
        {"service.yaml": EXAMPLE_TEXT, "docs/readme.yaml": "not: a template"},
    )
    result = validate([csar])
    assert result.ok, result.diagnostics
    assert result.model is not None


def test_csar_without_meta_and_two_root_yamls_is_ambiguous(tmp_path: Path) -> None:
    csar = make_csar(tmp_path / "x.csar", {"a.yaml": EXAMPLE_TEXT, "b.yml": EXAMPLE_TEXT})
    error = only(validate([csar]), "E105")
    assert error.position.file == str(csar)
    assert "more than one" in error.message


def test_csar_entry_definitions_naming_a_missing_file(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "x.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("Definitions/servcie.yaml"),
            "Definitions/service.yaml": EXAMPLE_TEXT,
        },
    )
    result = validate([csar])
    error = only(result, "E105")
    assert error.position.file == f"{csar}!TOSCA-Metadata/TOSCA.meta"
    assert error.position.line == 4  # the Entry-Definitions line of meta()
    assert error.value == "Definitions/servcie.yaml"
    assert error.hint is not None
    assert "Definitions/service.yaml" in error.hint
    assert result.model is None


def test_csar_import_is_relative_to_the_entry_file(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "vod.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("Definitions/service.yaml"),
            "Definitions/service.yaml": service_importing("types/cache.yaml"),
            "Definitions/types/cache.yaml": CACHE_TYPES,
            # Same name at the archive root: must not be the one picked.
            "types/cache.yaml": "this is: [not valid",
        },
    )
    result = validate([csar])
    assert result.ok, result.diagnostics
    assert result.model is not None
    assert len(result.model.service_functions) == 2


def test_csar_import_of_a_parent_directory(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "vod.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("Definitions/service.yaml"),
            "Definitions/service.yaml": service_importing("../Common/cache.yaml"),
            "Common/cache.yaml": CACHE_TYPES,
        },
    )
    assert validate([csar]).ok


def test_csar_diagnostics_name_the_file_inside_the_archive(tmp_path: Path) -> None:
    service = service_importing("types/cache.yaml").replace("cache_size: 2 GB", "cache_size: lots")
    types = CACHE_TYPES.replace("default: 1 GB", "default: 1 GB\n      unknown_field: 1")
    csar = make_csar(
        tmp_path / "bad.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("Definitions/service.yaml"),
            "Definitions/service.yaml": service,
            "Definitions/types/cache.yaml": types,
        },
    )
    result = validate([csar])
    assert not result.ok
    by_file = {d.position.file: d for d in result.errors}
    entry = by_file[f"{csar}!Definitions/service.yaml"]
    assert entry.code == "E404"
    assert entry.position.line == line_of(service, "cache_size: lots")
    imported = by_file[f"{csar}!Definitions/types/cache.yaml"]
    assert imported.position.line == line_of(types, "unknown_field")
    assert str(entry).startswith(f"{csar}!Definitions/service.yaml:{entry.position.line}:")


def test_csar_missing_import_lists_archive_members(tmp_path: Path) -> None:
    csar = make_csar(
        tmp_path / "vod.csar",
        {
            "TOSCA-Metadata/TOSCA.meta": meta("service.yaml"),
            "service.yaml": service_importing("cache_tpyes.yaml"),
            "cache_types.yaml": CACHE_TYPES,
        },
    )
    error = only(validate([csar]), "E103")
    assert error.position.file == f"{csar}!service.yaml"
    assert error.hint is not None
    assert "cache_types.yaml" in error.hint


def test_csar_yaml_syntax_error_is_located_in_the_member(tmp_path: Path) -> None:
    broken = EXAMPLE_TEXT.replace("targets: [origin, cache]", "targets: [origin, cache")
    csar = make_csar(tmp_path / "x.csar", {"service.yaml": broken})
    error = only(validate([csar]), "E100")
    assert error.position.file == f"{csar}!service.yaml"
    assert error.position.line >= line_of(broken, "targets: [origin, cache")


def test_corrupt_archive_and_non_utf8_member(tmp_path: Path) -> None:
    # A .csar that is not a zip archive is refused, whatever the code.
    fake = tmp_path / "fake.csar"
    fake.write_bytes(b"PK\x03\x04garbage")
    result = validate([fake])
    assert not result.ok
    assert all(d.severity is Severity.ERROR for d in result.diagnostics)
    csar = tmp_path / "latin.csar"
    with zipfile.ZipFile(csar, "w") as archive:
        archive.writestr("service.yaml", "description: caf\xe9".encode("latin-1"))
    error = only(validate([csar]), "E102")
    assert "UTF-8" in error.message


def test_a_zip_bomb_member_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """Issue 14 item 8: a 1 MB CSAR member inflating to 1 GiB was read whole into memory."""
    import resource

    csar = tmp_path / "bomb.csar"
    with zipfile.ZipFile(csar, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("TOSCA-Metadata/TOSCA.meta", "Entry-Definitions: service.yaml\n")
        with z.open("service.yaml", "w", force_zip64=True) as member:
            block = b"#" * (1 << 20)
            for _ in range(1024):  # 1 GiB of comment, about 1 MB compressed
                member.write(block)
    assert csar.stat().st_size < 4 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = validate([csar])
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    error = only(result, "E102")
    assert "service.yaml' inflates to more than 16 MiB" in error.message
    assert grown_kib < 200 << 10  # far below the 1 GiB it would take to inflate it
