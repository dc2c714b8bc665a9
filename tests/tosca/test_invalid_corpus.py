"""The invalid-template corpus: every file declares exactly the diagnostics it must produce.

A case is a YAML file directly under tests/tosca/invalid/, or a directory there:

* a plain directory is one service: each top-level ``*.yaml`` whose name does not start with
  ``_`` is validated (in name order, as one service); ``_*.yaml`` files and subdirectories are
  only imported;
* a directory named ``*.csar`` is zipped at run time into tmp_path (``case.txt`` is left out)
  and the archive is validated.

Each file starts with header comment lines:

    # expect: E801 24:29               an error at line 24, column 29 of this file
    # expect: E103 other.yaml:3:5      ... of another file of the case (relative path)
    # expect-warning: W902 12:5        a warning
    # hint: did you mean 'connected'?  the hint of the diagnostic declared just above contains this
    # topology: sandpit                validate with examples/topology/sandpit.yaml
    # xfail: reason                    a known validator bug (strict: must fail until fixed)

In a CSAR case the headers live in ``case.txt``; there a position names the file inside the
archive (``TOSCA-Metadata/TOSCA.meta:3:1``) and a bare ``0:0`` means the archive itself.
Positions are 1-based, as editors show them. Nothing may be reported that is not declared.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flame.topology.loader import load_topology
from flame.tosca import Diagnostic, Severity, validate

HERE = Path(__file__).parent
CORPUS = HERE / "invalid"
REPO = HERE.parent.parent
TOPOLOGIES = {"sandpit": REPO / "examples" / "topology" / "sandpit.yaml"}
CSAR_HEADER = "case.txt"

_EXPECT = re.compile(
    r"^#\s*(?P<kind>expect|expect-warning):\s*(?P<code>[EW]\d{3})\s+"
    r"(?:(?P<file>\S+):)?(?P<line>\d+):(?P<col>\d+)\s*$"
)
_OPTION = re.compile(r"^#\s*(?P<key>hint|topology|xfail):\s*(?P<value>.+?)\s*$")

Key = tuple[str, str, str, int, int]  # severity, file, code, line, column


@dataclass
class Case:
    name: str
    root: Path  # the corpus entry (a file or a directory)
    expected: list[Key] = field(default_factory=list)
    hints: dict[Key, list[str]] = field(default_factory=dict)
    topology: str | None = None
    xfail: str | None = None

    @property
    def is_csar(self) -> bool:
        return self.root.is_dir() and self.root.suffix == ".csar"

    def header_files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if self.is_csar:
            return [self.root / CSAR_HEADER]
        return sorted(p for p in self.root.rglob("*.yaml") if p.is_file())

    def inputs(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        return sorted(
            p for p in self.root.glob("*.yaml") if p.is_file() and not p.name.startswith("_")
        )


def _read_headers(case: Case, path: Path) -> None:
    default_file = "" if case.is_csar else _relative(case, path)
    last: Key | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        if match := _EXPECT.match(line):
            severity = "error" if match["kind"] == "expect" else "warning"
            file = match["file"] if match["file"] is not None else default_file
            last = (severity, file, match["code"], int(match["line"]), int(match["col"]))
            case.expected.append(last)
        elif match := _OPTION.match(line):
            key, value = match["key"], match["value"]
            if key == "hint":
                assert last is not None, f"{path}: '# hint:' must follow an expect line"
                case.hints.setdefault(last, []).append(value)
            elif key == "topology":
                assert value in TOPOLOGIES, f"{path}: unknown topology {value!r}"
                case.topology = value
            else:
                case.xfail = value
        elif line.lstrip("#").strip().startswith(("expect", "hint", "topology", "xfail")):
            pytest.fail(f"{path}: malformed header line {line!r}")


def _relative(case: Case, path: Path) -> str:
    base = case.root.parent if case.root.is_file() else case.root
    return path.resolve().relative_to(base.resolve()).as_posix()


def load_case(root: Path) -> Case:
    case = Case(root.name, root)
    for path in case.header_files():
        _read_headers(case, path)
    return case


def all_cases() -> list[Case]:
    return [
        load_case(p)
        for p in sorted(CORPUS.iterdir())
        if (p.is_file() and p.suffix == ".yaml") or p.is_dir()
    ]


CASES = all_cases()


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        marks = (
            [pytest.mark.xfail(reason=f"validator bug: {case.xfail}", strict=True)]
            if case.xfail
            else []
        )
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def build_csar(source: Path, tmp_path: Path) -> Path:
    archive = tmp_path / source.name
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != CSAR_HEADER:
                zf.write(path, path.relative_to(source).as_posix())
    return archive


def _key(case: Case, diagnostic: Diagnostic) -> Key:
    pos = diagnostic.position
    if case.is_csar:
        _, _, inner = pos.file.partition("!")
        file = inner
    else:
        file = _relative(case, Path(pos.file))
    return (diagnostic.severity.value, file, diagnostic.code, pos.line, pos.column)


def run(case: Case, tmp_path: Path):
    topology = load_topology(TOPOLOGIES[case.topology]) if case.topology else None
    paths = [build_csar(case.root, tmp_path)] if case.is_csar else case.inputs()
    assert paths, f"{case.name}: nothing to validate"
    return validate(paths, topology=topology)


def _show(diagnostics: list[Diagnostic]) -> str:
    return "\n".join(f"  {d.severity.value}: {d}" for d in diagnostics) or "  (none)"


# -- the corpus itself -----------------------------------------------------------------------


def test_corpus_is_large_enough():
    assert len(CASES) >= 45


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_case_declares_at_least_one_error(case: Case):
    assert any(k[0] == "error" for k in case.expected), f"{case.name} declares no error"


@pytest.mark.parametrize("case", _params())
def test_invalid_template(case: Case, tmp_path: Path):
    result = run(case, tmp_path)
    actual = Counter(_key(case, d) for d in result.diagnostics)
    expected = Counter(case.expected)
    assert actual == expected, (
        f"{case.name}\nmissing: {sorted((expected - actual).elements())}\n"
        f"unexpected: {sorted((actual - expected).elements())}\n"
        f"reported:\n{_show(result.diagnostics)}"
    )
    for diagnostic in result.diagnostics:
        assert diagnostic.message.strip(), f"empty message: {diagnostic!r}"
        assert diagnostic.severity in (Severity.ERROR, Severity.WARNING)
    by_key = {_key(case, d): d for d in result.diagnostics}
    for key, hints in case.hints.items():
        hint = by_key[key].hint or ""
        for wanted in hints:
            assert wanted in hint, f"{key}: hint {hint!r} does not contain {wanted!r}"
    assert not result.ok
    assert result.model is None


# -- CSAR archives that are no archives ------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not an archive\n", b"PK\x03\x04\x14\x00 truncated archive"],
    ids=["text", "truncated"],
)
def test_csar_that_is_not_an_archive(tmp_path: Path, content: bytes):
    path = tmp_path / "service.csar"
    path.write_bytes(content)
    result = validate([path])
    assert [(d.code, d.position.file) for d in result.diagnostics] == [("E105", str(path))]
    assert result.model is None
