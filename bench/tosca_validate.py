"""Benchmark: FLAME-TOSCA validation (`flame.tosca.validate`) against OpenStack tosca-parser.

Generates a seeded TOSCA Simple Profile service template of N node templates (stacks of
Compute -> WebServer/DBMS -> WebApplication/Database + an agent), checks that both validators
accept it, injects one error of each kind into a copy, counts which injected errors each tool
finds, and times both tools side by side (A B A B) on the clean and the erroneous template.

    .venv/bin/python bench/tosca_validate.py            # default: 15 rounds
    .venv/bin/python bench/tosca_validate.py --quick    # smoke run for CI: 3 rounds

The last line printed is one JSON object with the figures. Exit status 0 when the run completed,
whether or not we were faster or found more; 1 when the clean template is not accepted by both.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from toscaparser.common.exception import ExceptionCollector, ValidationError
from toscaparser.tosca_template import ToscaTemplate

from flame.tosca import validate

TOSCA_VERSION = "tosca_simple_yaml_1_3"
NODES_PER_STACK = 4
NODE_INDENT = "    "

# --------------------------------------------------------------------------------------------
# The template


@dataclass(slots=True)
class Node:
    """One node template as text lines (indented under node_templates)."""

    name: str
    role: str  # server, web, app, dbms, db, agent
    stack: int
    lines: list[str]


@dataclass(slots=True)
class Template:
    header: list[str]
    nodes: list[Node]
    footer: list[str]

    def render(self) -> str:
        lines = [*self.header]
        for node in self.nodes:
            lines.extend(node.lines)
        lines.extend(self.footer)
        return "\n".join(lines) + "\n"

    def node_ranges(self) -> dict[str, tuple[int, int]]:
        """First and last line (1-based) of each node template."""
        ranges: dict[str, tuple[int, int]] = {}
        line = len(self.header) + 1
        for node in self.nodes:
            ranges[node.name] = (line, line + len(node.lines) - 1)
            line += len(node.lines)
        return ranges

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _inputs() -> list[str]:
    return [
        "  inputs:",
        "    cpus:",
        "      type: integer",
        "      description: CPUs of each application server",
        "      default: 2",
        "      constraints:",
        "        - valid_values: [1, 2, 4, 8]",
        "    db_port:",
        "      type: integer",
        "      default: 5432",
        "      constraints:",
        "        - in_range: [1024, 65535]",
        "    db_password:",
        "      type: string",
        "      default: change-me-please",
        "      constraints:",
        "        - min_length: 8",
        "    db_root_password:",
        "      type: string",
        "      default: root-change-me",
        "      constraints:",
        "        - min_length: 8",
        "    context_root:",
        "      type: string",
        "      default: /shop",
        "      constraints:",
        "        - min_length: 1",
    ]


def _server(i: int, rng: random.Random) -> Node:
    name = f"server_{i:02d}"
    cpus = "{ get_input: cpus }" if i % 3 == 0 else str(rng.choice([1, 2, 4, 8]))
    lines = [
        f"{name}:",
        "  type: tosca.nodes.Compute",
        "  capabilities:",
        "    host:",
        "      properties:",
        f"        num_cpus: {cpus}",
        f"        mem_size: {rng.choice([2, 4, 8, 16])} GB",
        f"        disk_size: {rng.choice([20, 40, 80])} GB",
        "    os:",
        "      properties:",
        "        architecture: x86_64",
        "        type: linux",
        f"        distribution: {rng.choice(['ubuntu', 'debian', 'fedora'])}",
    ]
    return Node(name, "server", i, lines)


def _web(i: int, rng: random.Random) -> Node:
    name = f"web_{i:02d}"
    lines = [
        f"{name}:",
        "  type: tosca.nodes.WebServer",
        "  properties:",
        f"    component_version: 2.{rng.randint(0, 9)}.{rng.randint(0, 30)}",
        f"    admin_credential: {{ user: admin, token: s3cret-{i:02d} }}",
        "  requirements:",
        f"    - host: server_{i:02d}",
    ]
    return Node(name, "web", i, lines)


def _app(i: int, stacks: int) -> Node:
    name = f"app_{i:02d}"
    root = "{ get_input: context_root }" if i % 4 == 0 else f"/app{i:02d}"
    lines = [
        f"{name}:",
        "  type: tosca.nodes.WebApplication",
        "  properties:",
        f"    context_root: {root}",
        "  requirements:",
        f"    - host: web_{i:02d}",
    ]
    if i + 1 < stacks:
        lines.append(f"    - dependency: db_{i + 1:02d}")
    return Node(name, "app", i, lines)


def _dbms(i: int) -> Node:
    name = f"dbms_{i:02d}"
    lines = [
        f"{name}:",
        "  type: tosca.nodes.DBMS",
        "  properties:",
        "    port: { get_input: db_port }",
        "    root_password: { get_input: db_root_password }",
        "  requirements:",
        f"    - host: server_{i:02d}",
    ]
    return Node(name, "dbms", i, lines)


def _db(i: int, rng: random.Random) -> Node:
    name = f"db_{i:02d}"
    lines = [
        f"{name}:",
        "  type: tosca.nodes.Database",
        "  properties:",
        f"    name: {rng.choice(['orders', 'users', 'catalog', 'events'])}_{i:02d}",
        f"    user: svc_{i:02d}",
        "    password: { get_input: db_password }",
        f"    port: {{ get_property: [dbms_{i:02d}, port] }}",
        "  requirements:",
        f"    - host: dbms_{i:02d}",
    ]
    return Node(name, "db", i, lines)


def _agent(i: int, rng: random.Random) -> Node:
    name = f"agent_{i:02d}"
    watched = f"app_{i:02d}" if i % 2 == 0 else f"db_{i:02d}"
    lines = [
        f"{name}:",
        "  type: tosca.nodes.SoftwareComponent",
        "  properties:",
        f"    component_version: 1.{rng.randint(0, 5)}.{rng.randint(0, 9)}",
        "  requirements:",
        f"    - host: server_{i:02d}",
        f"    - dependency: {watched}",
    ]
    return Node(name, "agent", i, lines)


def _stack(i: int, stacks: int, rng: random.Random) -> list[Node]:
    """Even stacks serve a web application, odd stacks a database; each has a monitoring agent."""
    if i % 2 == 0:
        nodes = [_server(i, rng), _web(i, rng), _app(i, stacks), _agent(i, rng)]
    else:
        nodes = [_server(i, rng), _dbms(i), _db(i, rng), _agent(i, rng)]
    for node in nodes:
        node.lines = [NODE_INDENT + line for line in node.lines]
    return nodes


def _outputs(stacks: int) -> list[str]:
    lines = ["  outputs:"]
    for i in range(stacks):
        if i % 2 == 0:
            lines += [
                f"    app_{i:02d}_address:",
                f"      description: Address of application {i:02d}",
                f"      value: {{ get_attribute: [server_{i:02d}, public_address] }}",
            ]
        else:
            lines += [
                f"    db_{i:02d}_port:",
                f"      description: Port of database {i:02d}",
                f"      value: {{ get_property: [db_{i:02d}, port] }}",
            ]
    return lines


def generate(stacks: int, seed: int) -> Template:
    rng = random.Random(seed)
    header = [
        f"tosca_definitions_version: {TOSCA_VERSION}",
        "",
        f"description: Generated benchmark service ({stacks * NODES_PER_STACK} node templates, seed {seed})",
        "",
        "topology_template:",
        *_inputs(),
        "",
        "  node_templates:",
    ]
    nodes = [node for i in range(stacks) for node in _stack(i, stacks, rng)]
    return Template(header, nodes, ["", *_outputs(stacks)])


# --------------------------------------------------------------------------------------------
# Injected errors


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of error: which node role it goes into, how, and what it should be reported as."""

    name: str
    role: str
    expected_code: str
    edit: Callable[[Node], tuple[int, str]]  # edits node.lines; returns (line index, identifier)


def _replace(node: Node, prefix: str, new: str) -> int:
    """Replace the line starting (after indentation) with prefix; keep its indentation."""
    for index, line in enumerate(node.lines):
        if line.strip().startswith(prefix):
            indent = line[: len(line) - len(line.lstrip())]
            node.lines[index] = indent + new
            return index
    raise ValueError(f"{node.name}: no line starting with {prefix!r}")


def _find(node: Node, prefix: str) -> int:
    for index, line in enumerate(node.lines):
        if line.strip().startswith(prefix):
            return index
    raise ValueError(f"{node.name}: no line starting with {prefix!r}")


def _insert_below(node: Node, prefix: str, new: str) -> int:
    """Insert new one indentation level deeper right below the line starting with prefix."""
    index = _find(node, prefix)
    line = node.lines[index]
    indent = line[: len(line) - len(line.lstrip())] + "  "
    node.lines.insert(index + 1, indent + new)
    return index + 1


def _unknown_node_type(node: Node) -> tuple[int, str]:
    name = "tosca.nodes.SoftwareComponentX"
    return _replace(node, "type:", f"type: {name}"), name


def _unknown_property(node: Node) -> tuple[int, str]:
    return _insert_below(node, "properties:", "context_path: /legacy"), "context_path"


def _wrong_value_type(node: Node) -> tuple[int, str]:
    return _replace(node, "port:", "port: fifty-four-thirty-two"), "fifty-four-thirty-two"


def _missing_required(node: Node) -> tuple[int, str]:
    return _replace(node, "admin_credential:", "admin_credential: { user: admin }"), "token"


def _unknown_target(node: Node) -> tuple[int, str]:
    return _replace(node, "- host:", "- host: server_404"), "server_404"


def _undefined_input(node: Node) -> tuple[int, str]:
    return _replace(node, "password:", "password: { get_input: db_secret }"), "db_secret"


def _property_of_missing_node(node: Node) -> tuple[int, str]:
    return _replace(node, "port:", "port: { get_property: [dbms_404, port] }"), "dbms_404"


def _bad_scalar(node: Node) -> tuple[int, str]:
    return _replace(node, "mem_size:", "mem_size: 4 GBX"), "4 GBX"


def _constraint(node: Node) -> tuple[int, str]:
    return _replace(node, "num_cpus:", "num_cpus: 0"), "num_cpus"


def _unknown_capability(node: Node) -> tuple[int, str]:
    return _replace(node, "os:", "operating_system:"), "operating_system"


def _unknown_requirement(node: Node) -> tuple[int, str]:
    return _insert_below(node, "requirements:", "- monitors: server_00"), "monitors"


def _wrong_target_type(node: Node) -> tuple[int, str]:
    # A WebApplication must be hosted on a WebServer; a Compute offers a Compute capability.
    server = f"server_{node.stack:02d}"
    return _replace(node, "- host:", f"- host: {server}"), server


def _duplicate_key(node: Node) -> tuple[int, str]:
    # YAML keeps only one of two equal keys; which one a parser keeps is silently decided.
    return _insert_below(node, "properties:", "port: 5433"), "port"


def _unknown_template_key(node: Node) -> tuple[int, str]:
    index = _find(node, "requirements:")
    line = node.lines[index]
    node.lines.insert(index, line[: len(line) - len(line.lstrip())] + "requirement: []")
    return index, "requirement"


def _missing_property_of_existing_node(node: Node) -> tuple[int, str]:
    dbms = f"dbms_{node.stack:02d}"
    return _replace(
        node, "port:", f"port: {{ get_property: [{dbms}, listen_port] }}"
    ), "listen_port"


KINDS: tuple[Kind, ...] = (
    Kind("unknown node type", "agent", "E300", _unknown_node_type),
    Kind("unknown property name", "app", "E400", _unknown_property),
    Kind("wrong value type (string for integer)", "dbms", "E402", _wrong_value_type),
    Kind("missing required property", "web", "E401", _missing_required),
    Kind("requirement names a non-existent node", "agent", "E501", _unknown_target),
    Kind("get_input of an undefined input", "db", "E601", _undefined_input),
    Kind("get_property of a non-existent node", "db", "E602", _property_of_missing_node),
    Kind("invalid scalar unit", "server", "E404", _bad_scalar),
    Kind("constraint violation (num_cpus: 0)", "server", "E403", _constraint),
    Kind("unknown capability name", "server", "E505", _unknown_capability),
    Kind("unknown requirement name", "agent", "E500", _unknown_requirement),
    Kind("requirement target of the wrong type", "app", "E502", _wrong_target_type),
    Kind("duplicate key in a mapping", "dbms", "E101", _duplicate_key),
    Kind("unknown key in a node template", "web", "E200", _unknown_template_key),
    Kind("get_property of a missing property", "db", "E602", _missing_property_of_existing_node),
)


@dataclass(slots=True)
class Injection:
    kind: Kind
    node: str
    line: int  # 1-based, in the rendered erroneous template
    identifier: str  # the injected name or value, as a peer message would quote it
    first: int = 0  # the node template's line range
    last: int = 0
    ours: list[str] = field(default_factory=list)  # matching diagnostics: "line:col code"
    peer: list[str] = field(default_factory=list)  # matching peer messages


def _roles_of(stack: int) -> set[str]:
    return {"server", "agent"} | ({"web", "app"} if stack % 2 == 0 else {"dbms", "db"})


def _pick_stack(kind: Kind, target: int, stacks: int, used: set[int]) -> int:
    """The unused stack nearest to target that has a node of the kind's role."""
    order = sorted(range(stacks), key=lambda s: (abs(s - target), s))
    return next(s for s in order if s not in used and kind.role in _roles_of(s))


def inject(template: Template, count: int) -> list[Injection]:
    """Inject count errors, each of a different kind, spread evenly over the stacks."""
    stacks = len(template.nodes) // NODES_PER_STACK
    used: set[int] = set()
    pending: list[tuple[Kind, str, int, str]] = []
    for k, kind in enumerate(KINDS[:count]):
        stack = _pick_stack(kind, int((k + 0.5) * stacks / count), stacks, used)
        used.add(stack)
        node = next(n for n in template.nodes if n.stack == stack and n.role == kind.role)
        index, identifier = kind.edit(node)
        pending.append((kind, node.name, index, identifier))
    ranges = template.node_ranges()
    injections = []
    for kind, name, index, identifier in pending:
        first, last = ranges[name]
        injections.append(Injection(kind, name, first + index, identifier, first, last))
    return sorted(injections, key=lambda inj: inj.line)


# --------------------------------------------------------------------------------------------
# The two validators


@dataclass(frozen=True, slots=True)
class OurError:
    code: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column} {self.code} {self.message}"


@dataclass(slots=True)
class Report:
    errors: list[str]
    warnings: list[str] = field(default_factory=list)
    ours: list[OurError] = field(default_factory=list)


def run_ours(path: Path) -> Report:
    result = validate([path])
    errors = [
        OurError(d.code, d.position.line, d.position.column, d.message) for d in result.errors
    ]
    return Report([str(e) for e in errors], [str(w) for w in result.warnings], errors)


def run_peer(path: Path) -> Report:
    """tosca-parser collects errors in ExceptionCollector and raises one ValidationError."""
    try:
        ToscaTemplate(str(path))
    except ValidationError:
        return Report([_peer_entry(e) for e in ExceptionCollector.getExceptions()])
    except Exception as exc:  # a crash of the peer counts as one error it reported
        return Report([f"crashed: {type(exc).__name__}: {exc}"])
    return Report([])


def _peer_entry(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def quiet_peer_logging() -> None:
    """tosca-parser logs every template it passes at INFO; keep the table readable."""
    logging.getLogger("tosca").setLevel(logging.ERROR)
    logging.getLogger("toscaparser").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Matching


def match(injections: list[Injection], ours: Report, peer: Report) -> None:
    """Ours: an error on the injected line or within the node template's lines.

    Peer (its errors carry no line numbers): an error message that quotes the node template's
    name or the injected identifier (the unknown type, property, input, node, capability or
    requirement name, the bad value, or the violated property's name).
    """
    for inj in injections:
        inj.ours = [
            str(e) for e in ours.ours if e.line == inj.line or inj.first <= e.line <= inj.last
        ]
        inj.peer = [m for m in peer.errors if _quotes(m, inj.node) or _quotes(m, inj.identifier)]


def _quotes(message: str, name: str) -> bool:
    """name appears in message as a whole word (db_01 does not match db_010)."""
    start = message.find(name)
    while start >= 0:
        end = start + len(name)
        before = message[start - 1] if start > 0 else " "
        after = message[end] if end < len(message) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = message.find(name, start + 1)
    return False


# --------------------------------------------------------------------------------------------
# Timing


@dataclass(slots=True)
class Timings:
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)


def timed(func: Callable[[Path], Report], path: Path) -> tuple[float, Report]:
    start = time.perf_counter()
    report = func(path)
    return (time.perf_counter() - start) * 1000, report


def alternate(path: Path, rounds: int) -> Timings:
    """A B A B: one call of ours, then one of tosca-parser, rounds times."""
    timings = Timings()
    for _ in range(rounds):
        timings.ours.append(timed(run_ours, path)[0])
        timings.peer.append(timed(run_peer, path)[0])
    return timings


COLD_SCRIPTS = {
    "ours": "from flame.tosca import validate\nvalidate([path])\n",
    "peer": (
        "import logging\n"
        "logging.getLogger('tosca').setLevel(logging.ERROR)\n"
        "from toscaparser.common.exception import ValidationError\n"
        "from toscaparser.tosca_template import ToscaTemplate\n"
        "try:\n"
        "    ToscaTemplate(path)\n"
        "except ValidationError:\n"
        "    pass\n"
    ),
}


def cold_start(side: str, path: Path) -> tuple[float, float]:
    """(imports + first call, whole process) in ms, in a fresh interpreter."""
    script = (
        "import sys, time\n"
        "path = sys.argv[1]\n"
        "start = time.perf_counter()\n"
        + COLD_SCRIPTS[side]
        + "print((time.perf_counter() - start) * 1000)\n"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    wall = (time.perf_counter() - start) * 1000
    return float(out.stdout.strip().splitlines()[-1]), wall


# --------------------------------------------------------------------------------------------
# Output

NOTES = """\
Notes: both validators run in this process on the same file with their defaults: ours is
validate([path]); tosca-parser is ToscaTemplate(path), its individual errors read from
ExceptionCollector.getExceptions() after it raises ValidationError (its INFO log is silenced).
Ours parses the normative TOSCA 1.3 types and the FLAME profile once per process
(functools.cache), so its first call is slower than its warm median; tosca-parser loads its
normative types when imported and is also slower on its first call. Imports are not timed
except in the fresh-process rows: a new interpreter that imports the validator and validates
the clean template once (one sample each, so noisy)."""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(value: float) -> str:
    return f"{value:9.1f}"


def print_reports(title: str, ours: Report, peer: Report, limit: int = 40) -> None:
    print(f"\n{title}")
    print(f"  ours: {len(ours.errors)} error(s), {len(ours.warnings)} warning(s)")
    for line in [*ours.errors, *ours.warnings][:limit]:
        print(f"    {line}")
    print(f"  tosca-parser: {len(peer.errors)} error(s)")
    for line in peer.errors[:limit]:
        print(f"    {line.splitlines()[0]}")


def print_injections(injections: list[Injection], ours: Report, peer: Report) -> None:
    print("\nInjected errors. Matching rule -- ours: an error whose line is the injected line or")
    print("inside that node template's lines; tosca-parser (its errors carry no line): an error")
    print("message naming the node template or the injected identifier/value as a whole word.")
    print(f"  {'line':>5}  {'node':<9}  {'kind':<38}  {'ours':<6}  {'peer':<4}")
    for inj in injections:
        codes = ",".join(sorted({e.split()[1] for e in inj.ours})) or "-"
        found = "yes" if inj.peer else "-"
        print(f"  {inj.line:>5}  {inj.node:<9}  {inj.kind.name:<38}  {codes:<6}  {found:<4}")
    found_ours = sum(1 for inj in injections if inj.ours)
    found_peer = sum(1 for inj in injections if inj.peer)
    print(
        f"  found: ours {found_ours}/{len(injections)}, tosca-parser {found_peer}/{len(injections)}"
    )
    print(f"  errors reported in all: ours {len(ours.errors)}, tosca-parser {len(peer.errors)}")
    print("\nMatched messages:")
    for inj in injections:
        print(f"  line {inj.line} ({inj.kind.name}, identifier '{inj.identifier}'):")
        for text in inj.ours or ["(none)"]:
            print(f"    ours: {text}")
        for text in inj.peer or ["(none)"]:
            print(f"    peer: {text.splitlines()[0]}")
    for inj in injections:
        if not any(e.split()[1] == inj.kind.expected_code for e in inj.ours):
            print(
                f"  NOTE ours: no {inj.kind.expected_code} for '{inj.kind.name}' at line {inj.line}"
            )


def print_timing(label: str, timings: Timings) -> float:
    ours, peer = median(timings.ours), median(timings.peer)
    ratio = peer / ours if ours else float("nan")
    print(f"  {label:<28}{ms(ours)}  {ms(peer)}  {ratio:8.1f}x")
    return ratio


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15)")
    parser.add_argument("--nodes", type=int, default=100, help="node templates (multiple of 4)")
    parser.add_argument(
        "--errors", type=int, default=len(KINDS), help=f"injected errors (1..{len(KINDS)})"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    if args.nodes < 2 * NODES_PER_STACK or args.nodes % NODES_PER_STACK:
        parser.error(f"--nodes must be a multiple of {NODES_PER_STACK}, at least 8")
    if not 1 <= args.errors <= len(KINDS):
        parser.error(f"--errors must be between 1 and {len(KINDS)}")
    if args.errors > args.nodes // NODES_PER_STACK:
        parser.error("--errors must not exceed the number of stacks (nodes / 4)")
    return args


@dataclass(slots=True)
class Run:
    args: argparse.Namespace
    clean: Path
    broken: Path
    injections: list[Injection]
    figures: dict[str, object] = field(default_factory=dict)


def check_clean(run: Run) -> tuple[float, float] | None:
    """Both must accept the clean template; returns the first-call times (ours, peer)."""
    ours_first, ours = timed(run_ours, run.clean)
    peer_first, peer = timed(run_peer, run.clean)
    print(
        f"\nClean template: ours {len(ours.errors)} error(s), {len(ours.warnings)} warning(s); "
        f"tosca-parser {len(peer.errors)} error(s)"
    )
    if ours.errors or peer.errors or ours.warnings:
        print_reports(f"Clean template {run.clean.name}:", ours, peer)
    if ours.errors or peer.errors:
        print("\nABORT: the clean template must be accepted by both validators; fix the generator.")
        return None
    return ours_first, peer_first


def execute(run: Run) -> int:
    quiet_peer_logging()
    first = check_clean(run)
    if first is None:
        return 1
    ours_broken, peer_broken = run_ours(run.broken), run_peer(run.broken)
    match(run.injections, ours_broken, peer_broken)
    print_reports(f"Erroneous template ({len(run.injections)} injected):", ours_broken, peer_broken)
    print_injections(run.injections, ours_broken, peer_broken)

    clean_t = alternate(run.clean, run.args.rounds)
    broken_t = alternate(run.broken, run.args.rounds)
    ours_cold, ours_wall = cold_start("ours", run.clean)
    peer_cold, peer_wall = cold_start("peer", run.clean)

    print(f"\nTiming, ms (median of {run.args.rounds} rounds, A B A B, time.perf_counter):")
    print(f"  {'':<28}{'ours':>9}  {'peer':>9}  {'peer/ours':>9}")
    ratio = print_timing("clean template", clean_t)
    broken_ratio = print_timing("erroneous template", broken_t)
    print(f"  {'first call in this process':<28}{ms(first[0])}  {ms(first[1])}")
    print(f"  {'fresh process: import+call':<28}{ms(ours_cold)}  {ms(peer_cold)}")
    print(f"  {'fresh process: wall':<28}{ms(ours_wall)}  {ms(peer_wall)}")
    print(
        f"\nVersions: flame-platform {version('flame-platform')}, tosca-parser"
        f" {version('tosca-parser')}, Python {sys.version.split()[0]}.\n" + NOTES
    )
    run.figures = {
        "bench": "tosca_validate",
        "nodes": run.args.nodes,
        "rounds": run.args.rounds,
        "ours_ms": round(median(clean_t.ours), 2),
        "peer_ms": round(median(clean_t.peer), 2),
        "ratio": round(ratio, 2),
        "ours_err_ms": round(median(broken_t.ours), 2),
        "peer_err_ms": round(median(broken_t.peer), 2),
        "ratio_err": round(broken_ratio, 2),
        "ours_first_call_ms": round(first[0], 2),
        "peer_first_call_ms": round(first[1], 2),
        "ours_cold_ms": round(ours_cold, 2),
        "peer_cold_ms": round(peer_cold, 2),
        "injected": len(run.injections),
        "ours_found": sum(1 for inj in run.injections if inj.ours),
        "peer_found": sum(1 for inj in run.injections if inj.peer),
        "ours_errors_total": len(ours_broken.errors),
        "peer_errors_total": len(peer_broken.errors),
    }
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stacks = args.nodes // NODES_PER_STACK
    with tempfile.TemporaryDirectory(prefix="tosca-bench-") as tmp:
        clean = Path(tmp) / "clean.yaml"
        broken = Path(tmp) / "erroneous.yaml"
        clean.write_text(generate(stacks, args.seed).render())
        template = generate(stacks, args.seed)
        injections = inject(template, args.errors)
        broken.write_text(template.render())
        print(
            f"tosca_validate: {args.nodes} node templates ({stacks} stacks), seed {args.seed}, "
            f"{args.errors} injected errors, {args.rounds} rounds; {TOSCA_VERSION}"
        )
        run = Run(args, clean, broken, injections)
        status = execute(run)
    if status != 0:
        run.figures = {
            "bench": "tosca_validate",
            "nodes": args.nodes,
            "error": "clean template rejected",
        }
    print(json.dumps(run.figures))
    return status


if __name__ == "__main__":
    sys.exit(main())
