"""Topology files: the sandpit example, every error path located, and a large generated file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flame.common.diagnostics import Diagnostic, Severity, ValidationFailed
from flame.topology.loader import load_topology
from flame.topology.model import DEFAULT_RESERVED, LinkState, NodeKind, Resources, Topology, Vim

REPO = Path(__file__).resolve().parents[2]
SANDPIT = REPO / "examples" / "topology" / "sandpit.yaml"

# 192.0.2.0/24 (TEST-NET-1) only ever appears as text in a file; nothing connects anywhere.
BASE = """\
flame_topology: 1
name: tiny
locations:
  bristol: {latitude: 51.45, longitude: -2.59}
service_routers:
  sr-a:
    location: bristol
    address: 127.0.1.1
  sr-b: {address: "::1"}
switches:
  sw-1: {}
clusters:
  edge-1:
    sr: sr-a
    location: bristol
    capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}
user_equipment:
  ue-1: {sr: sr-a}
links:
  - between: [sr-a, sw-1]
    latency: 2 ms
    bandwidth: 1 Gbps
  - {between: [sw-1, sr-b], latency: 3}
"""


def write(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def failures(tmp_path: Path, text: str) -> list[Diagnostic]:
    path = write(tmp_path, text)
    with pytest.raises(ValidationFailed) as info:
        load_topology(path)
    diagnostics = info.value.diagnostics
    assert diagnostics
    assert all(d.position.file == str(path) for d in diagnostics)
    return diagnostics


def the_error(tmp_path: Path, text: str) -> Diagnostic:
    diagnostics = failures(tmp_path, text)
    assert len(diagnostics) == 1, [str(d) for d in diagnostics]
    assert diagnostics[0].severity is Severity.ERROR
    return diagnostics[0]


def where(text: str, needle: str, nth: int = 0, *, skip: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the `nth` occurrence of `needle` in `text`, `skip` chars in."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    index += skip
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def at(d: Diagnostic) -> tuple[int, int]:
    return d.position.line, d.position.column


# -- the sandpit example -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandpit() -> Topology:
    return load_topology(SANDPIT)


def test_sandpit_counts(sandpit: Topology) -> None:
    assert sandpit.name == "sandpit"
    assert sandpit.source == str(SANDPIT)
    assert sorted(sandpit.service_routers) == ["sr-metro", "sr-platform", "sr-ue-1", "sr-ue-2"]
    assert sorted(sandpit.clusters) == ["edge-bath", "edge-bristol", "metro-london"]
    assert sorted(sandpit.of_kind(NodeKind.SWITCH)) == ["sw-east", "sw-west"]
    assert sorted(sandpit.of_kind(NodeKind.USER_EQUIPMENT)) == ["ue-bath", "ue-bristol"]
    assert len(sandpit.nodes) == 11
    assert len(sandpit.links) == 6
    assert sorted(sandpit.locations) == ["bath", "bristol-centre", "bristol-harbour", "london"]


def test_sandpit_clusters(sandpit: Topology) -> None:
    bristol = sandpit.clusters["edge-bristol"]
    assert bristol.sr == "sr-ue-1"
    assert bristol.location_name == "bristol-harbour"
    assert bristol.location == sandpit.locations["bristol-harbour"]
    assert bristol.capacity == Resources(cpus=4.0, memory_bytes=8 * 10**9, disk_bytes=50 * 10**9)
    assert sandpit.clusters["metro-london"].capacity == Resources(16.0, 64 * 10**9, 10**12)
    for cluster in sandpit.clusters.values():
        # Nothing says otherwise: the default reserved share and the process VIM.
        assert cluster.reserved == DEFAULT_RESERVED
        assert cluster.vim is Vim.PROCESS
    assert Resources(cpus=1.0, memory_bytes=10**9, disk_bytes=1_500_000_000) == DEFAULT_RESERVED


def test_sandpit_routers_and_links(sandpit: Topology) -> None:
    assert sandpit.service_routers["sr-ue-1"].address == "127.0.1.1"
    first = sandpit.links[0]
    assert (first.a, first.b) == ("sr-ue-1", "sw-west")
    assert first.latency_ms == 1.0
    assert first.bandwidth_bps == 1e10
    assert first.state is LinkState.UP
    assert first.link_class is None
    core = sandpit.links[3]
    assert (core.a, core.b, core.latency_ms, core.bandwidth_bps) == (
        "sw-west",
        "sr-metro",
        12.0,
        4e10,
    )
    assert core.link_class == "core"


def test_units_of_latency_and_bandwidth(tmp_path: Path) -> None:
    text = edit("latency: 2 ms", "latency: 0.5 s")
    text = edit("bandwidth: 1 Gbps", "bandwidth: 100 Mbps", text)
    topology = load_topology(write(tmp_path, text))
    assert topology.links[0].latency_ms == pytest.approx(500.0)
    assert topology.links[0].bandwidth_bps == 1e8
    # A bare number means milliseconds; no bandwidth means unknown.
    assert topology.links[1].latency_ms == 3.0
    assert topology.links[1].bandwidth_bps is None
    # No latency at all means 1 ms.
    text = edit("{between: [sw-1, sr-b], latency: 3}", "{between: [sw-1, sr-b]}")
    assert load_topology(write(tmp_path, text)).links[1].latency_ms == 1.0


def test_optional_fields(tmp_path: Path) -> None:
    text = edit(
        "    capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}\n",
        "    capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}\n"
        "    reserved: {cpus: 0.5, memory: 512 MB, disk: 1 GiB}\n"
        "    vim: kubernetes\n",
    )
    text = edit("latency: 3}", "latency: 3, cost: 2.5, state: down, class: backup}", text)
    topology = load_topology(write(tmp_path, text))
    cluster = topology.clusters["edge-1"]
    assert cluster.reserved == Resources(0.5, 512 * 10**6, 1024**3)
    assert cluster.vim is Vim.KUBERNETES
    link = topology.links[1]
    assert (link.cost, link.state, link.link_class) == (2.5, LinkState.DOWN, "backup")
    assert topology.service_routers["sr-b"].address == "::1"
    assert topology.nodes["ue-1"].sr == "sr-a"


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    text = edit("name: tiny\n", "")
    assert load_topology(write(tmp_path, text, "my-lab.yaml")).name == "my-lab"


def test_inline_location(tmp_path: Path) -> None:
    text = edit("  sw-1: {}", "  sw-1: {location: {latitude: 10, longitude: 20}}")
    node = load_topology(write(tmp_path, text)).nodes["sw-1"]
    assert node.location is not None
    assert (node.location.latitude, node.location.longitude) == (10.0, 20.0)
    assert node.location_name is None


# -- every error, located -------------------------------------------------------------------------


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    text = edit("  edge-1:\n    sr: sr-a\n", "  edge-1:\n    sr: sr-a\n    capacty: 1\n")
    errors = failures(tmp_path, text)
    unknown = [d for d in errors if d.code == "E200"]
    assert len(unknown) == 1
    assert at(unknown[0]) == where(text, "capacty")
    assert unknown[0].hint == "did you mean 'capacity'?"
    assert unknown[0].value == "capacty"


@pytest.mark.parametrize(
    ("old", "new", "typo", "suggestion"),
    [
        ("switches:", "swtiches:", "swtiches", "switches"),
        (
            "    location: bristol\n    address",
            "    locaton: bristol\n    address",
            "locaton",
            "location",
        ),
        ("latency: 3}", "latency: 3, bandwith: 1 Gbps}", "bandwith", "bandwidth"),
        ("{cpus: 4,", "{cpu: 4, cpus: 4,", "cpu", "cpus"),
        ("{latitude: 51.45,", "{latitude: 51.45, lattitude: 1,", "lattitude", "latitude"),
    ],
)
def test_unknown_keys_everywhere(
    tmp_path: Path, old: str, new: str, typo: str, suggestion: str
) -> None:
    text = edit(old, new)
    unknown = [d for d in failures(tmp_path, text) if d.code == "E200"]
    assert len(unknown) == 1
    assert at(unknown[0]) == where(text, typo + ":")
    assert unknown[0].hint == f"did you mean '{suggestion}'?"


def test_duplicate_id_across_sections(tmp_path: Path) -> None:
    text = edit("  sw-1: {}\n", "  sw-1: {}\n  sr-a: {}\n")
    error = the_error(tmp_path, text)
    assert error.code == "T105"
    assert at(error) == where(text, "sr-a:", 1)
    assert f"first at line {where(text, 'sr-a:')[0]}" in error.message
    assert error.value == "sr-a"


def test_duplicate_id_within_a_section_is_a_duplicate_key(tmp_path: Path) -> None:
    text = edit("  sw-1: {}\n", "  sw-1: {}\n  sw-1: {}\n")
    error = the_error(tmp_path, text)
    assert error.code == "E101"
    assert at(error) == where(text, "sw-1: {}", 1)


def test_cluster_without_capacity(tmp_path: Path) -> None:
    text = edit("    capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}\n", "")
    error = the_error(tmp_path, text)
    assert error.code == "E202"
    assert at(error) == where(text, "edge-1:")
    assert "capacity" in error.message


def test_cluster_whose_sr_is_not_a_service_router(tmp_path: Path) -> None:
    text = edit("    sr: sr-a\n", "    sr: sw-1\n")
    error = the_error(tmp_path, text)
    assert error.code == "T103"
    assert at(error) == where(text, "sr: sw-1", skip=len("sr: "))
    assert error.value == "sw-1"


def test_user_equipment_with_misspelt_sr_gets_a_hint(tmp_path: Path) -> None:
    text = edit("ue-1: {sr: sr-a}", "ue-1: {sr: sr-c}")
    error = the_error(tmp_path, text)
    assert error.code == "T103"
    assert at(error) == where(text, "sr-c")
    assert error.hint in ("did you mean 'sr-a'?", "did you mean 'sr-b'?")


def test_cluster_without_sr(tmp_path: Path) -> None:
    text = edit("    sr: sr-a\n", "")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("E202", where(text, "edge-1:"))


def test_link_to_unknown_node(tmp_path: Path) -> None:
    text = edit("[sr-a, sw-1]", "[sr-a, sw-2]")
    error = the_error(tmp_path, text)
    assert error.code == "T103"
    assert at(error) == where(text, "[sr-a, sw-2]")
    assert error.value == "sw-2"
    assert error.hint == "did you mean 'sw-1'?"


def test_link_to_itself(tmp_path: Path) -> None:
    text = edit("[sr-a, sw-1]", "[sw-1, sw-1]")
    error = the_error(tmp_path, text)
    assert error.code == "T104"
    assert at(error) == where(text, "[sw-1, sw-1]")
    assert "itself" in error.message


@pytest.mark.parametrize("between", ["[sr-a]", "[sr-a, sw-1, sr-b]", "sr-a", "[sr-a, 5]"])
def test_link_between_must_be_two_names(tmp_path: Path, between: str) -> None:
    text = edit("[sr-a, sw-1]", between)
    error = the_error(tmp_path, text)
    assert error.code == "E201"
    assert at(error) == where(text, f"between: {between}", skip=len("between: "))


def test_link_without_between(tmp_path: Path) -> None:
    text = edit("{between: [sw-1, sr-b], latency: 3}", "{latency: 3}")
    error = the_error(tmp_path, text)
    assert error.code == "E202"
    assert error.position.line == where(text, "{latency: 3}")[0]


@pytest.mark.parametrize(
    ("latency", "fragment"),
    [("2 parsecs", "parsecs"), ("fast", "fast"), ("-2 ms", "negative"), ("-2", "negative")],
)
def test_bad_latency(tmp_path: Path, latency: str, fragment: str) -> None:
    text = edit("latency: 2 ms", f"latency: {latency}")
    error = the_error(tmp_path, text)
    assert error.code == "T104"
    assert at(error) == where(text, f"latency: {latency}", skip=len("latency: "))
    assert fragment in error.message


def test_bad_latency_unit_lists_time_units(tmp_path: Path) -> None:
    error = the_error(tmp_path, edit("latency: 2 ms", "latency: 2 parsecs"))
    assert error.hint is not None
    assert "ms" in error.hint


def test_bad_bandwidth(tmp_path: Path) -> None:
    text = edit("bandwidth: 1 Gbps", "bandwidth: 1 GHz")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T104", where(text, "1 GHz"))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("localhost", "must be an IP address"),
        ("127.0.0.256", "must be an IP address"),
        ("10.0.0", "must be an IP address"),
        ("0.0.0.0", "one host's address"),
        ("'::'", "one host's address"),
        ("224.0.0.1", "one host's address"),
        ("255.255.255.255", "one host's address"),
    ],
)
def test_bad_address(tmp_path: Path, address: str, why: str) -> None:
    text = edit("address: 127.0.1.1", f"address: {address}")
    error = the_error(tmp_path, text)
    assert error.code == "T104"
    assert at(error) == where(text, address)
    assert why in error.message


def test_bad_vim(tmp_path: Path) -> None:
    text = edit("    sr: sr-a\n", "    sr: sr-a\n    vim: kubernets\n")
    error = the_error(tmp_path, text)
    assert error.code == "T104"
    assert at(error) == where(text, "kubernets")
    assert error.hint == "did you mean 'kubernetes'?"


def test_unknown_location(tmp_path: Path) -> None:
    text = edit("  sw-1: {}", "  sw-1: {location: bristl}")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T103", where(text, "bristl}"))
    assert error.hint == "did you mean 'bristol'?"


@pytest.mark.parametrize(
    ("lat", "lon"), [("91", "0"), ("0", "-181"), ("north", "0"), ("true", "0")]
)
def test_bad_coordinates(tmp_path: Path, lat: str, lon: str) -> None:
    text = edit("{latitude: 51.45, longitude: -2.59}", f"{{latitude: {lat}, longitude: {lon}}}")
    errors = failures(tmp_path, text)
    assert errors[0].code == "T104"
    key, bad = ("latitude", lat) if lat != "0" else ("longitude", lon)
    assert at(errors[0]) == where(text, f"{key}: {bad}", skip=len(key) + 2)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("{cpus: 4,", "{cpus: 0,"),
        ("{cpus: 4,", "{cpus: many,"),
        ("memory: 8 GB", "memory: 8 Gbps"),
        ("disk: 50 GB", "disk: 50"),
    ],
)
def test_bad_capacity(tmp_path: Path, old: str, new: str) -> None:
    text = edit(old, new)
    error = the_error(tmp_path, text)
    assert error.code == "T104"
    key = new.partition(":")[0].lstrip("{")
    assert at(error) == where(text, new, skip=new.index(":") + 2)
    assert key in error.message


def test_bad_node_id(tmp_path: Path) -> None:
    text = edit("  ue-1: {sr: sr-a}", "  UE_1: {sr: sr-a}")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T104", where(text, "UE_1"))


def test_flame_topology_missing(tmp_path: Path) -> None:
    text = "# a lab\n" + edit("flame_topology: 1\n", "")
    error = the_error(tmp_path, text)
    assert error.code == "T106"
    assert at(error) == where(text, "name:")  # the top-level mapping starts there
    assert error.hint is not None
    assert "flame_topology: 1" in error.hint


@pytest.mark.parametrize("version", ["2", "'1'", "one"])
def test_flame_topology_wrong(tmp_path: Path, version: str) -> None:
    text = edit("flame_topology: 1", f"flame_topology: {version}")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T106", where(text, version))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "E201"),
        ("- a\n- b\n", "E201"),
        ("flame_topology: [1\n", "E100"),
        ("a: 1\na: 2\n", "E101"),
    ],
)
def test_not_a_topology(tmp_path: Path, text: str, code: str) -> None:
    assert code in [d.code for d in failures(tmp_path, text)]


def test_sections_of_the_wrong_shape(tmp_path: Path) -> None:
    text = edit("switches:\n  sw-1: {}\n", "switches: [sw-1]\n")
    text = edit("user_equipment:\n  ue-1: {sr: sr-a}\n", "user_equipment: 3\n", text)
    errors = failures(tmp_path, text)
    assert [(d.code, at(d)) for d in errors if d.code == "E201"] == [
        ("E201", where(text, "[sw-1]")),
        ("E201", where(text, "3\n")),
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        load_topology(tmp_path / "nope.yaml")
    assert [d.code for d in info.value.diagnostics] == ["E102"]


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = edit("address: 127.0.1.1", "address: 192.0.2.300")
    text = edit("[sr-a, sw-1]", "[sr-a, sw-9]", text)
    text = edit("    sr: sr-a\n", "    sr: sr-a\n    vim: xen\n", text)
    errors = failures(tmp_path, text)
    assert sorted(d.code for d in errors) == ["T103", "T104", "T104"]
    # Sorted by position, as the CLI prints them.
    assert [d.position for d in errors] == sorted(d.position for d in errors)


# -- bugs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("latency", [".nan", ".inf"])
def test_non_finite_latency_is_rejected(tmp_path: Path, latency: str) -> None:
    text = edit("latency: 3}", f"latency: {latency}}}")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T104", where(text, latency))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("memory: 8 GB", "memory: -8 GB"),
        ("disk: 50 GB", "disk: -50 GB"),
        ("cpus: 4,", "cpus: .nan,"),
    ],
)
def test_non_positive_or_non_finite_capacity_is_rejected(
    tmp_path: Path, old: str, new: str
) -> None:
    text = edit(old, new)
    error = the_error(tmp_path, text)
    assert error.code == "T104"


def test_negative_bandwidth_is_rejected(tmp_path: Path) -> None:
    text = edit("bandwidth: 1 Gbps", "bandwidth: -1 Gbps")
    error = the_error(tmp_path, text)
    assert (error.code, at(error)) == ("T104", where(text, "-1 Gbps"))


def test_flame_topology_true_is_not_version_1(tmp_path: Path) -> None:
    text = edit("flame_topology: 1", "flame_topology: true")
    error = the_error(tmp_path, text)
    assert error.code == "T106"


# -- scale ------------------------------------------------------------------------------------------


def test_ten_thousand_links(tmp_path: Path) -> None:
    switches = 2000
    lines = ["flame_topology: 1", "name: big", "switches:"]
    lines += [f"  sw-{i}: {{}}" for i in range(switches)]
    lines.append("links:")
    expected = []
    for step in range(1, 6):
        for i in range(switches):
            a, b = f"sw-{i}", f"sw-{(i + step) % switches}"
            latency = (i % 7) + step
            expected.append((a, b, float(latency)))
            lines.append(f"  - {{between: [{a}, {b}], latency: {latency} ms}}")
    assert len(expected) == 10_000
    topology = load_topology(write(tmp_path, "\n".join(lines) + "\n"))
    assert len(topology.nodes) == switches
    assert len(topology.links) == 10_000
    assert [(link.a, link.b) for link in topology.links] == [(a, b) for a, b, _ in expected]
    assert [link.latency_ms for link in topology.links] == pytest.approx([e[2] for e in expected])
    assert all(math.isfinite(link.latency_ms) for link in topology.links)
