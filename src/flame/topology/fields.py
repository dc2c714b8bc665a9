"""The topology file's fields as declarative tables (`flame.common.yamlfields`) and their checks.

Each check words its diagnostic the way the loader always has and carries its stable code; the
loader (`flame.topology.loader`) reads the sections with these shapes and checks what spans them
(ids, references, duplicate endpoints).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any, TypeGuard

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlfields import FAILED, Check, Field, FieldContext, Problem, Shape, read_map
from flame.common.yamlshape import MISSING_KEY, WRONG_SHAPE, did_you_mean, kind_of
from flame.topology.geo import GeoPoint
from flame.topology.model import DEFAULT_RESERVED, LinkState, Node, NodeKind, Resources, Vim

UNKNOWN_REFERENCE = "T103"
BAD_VALUE = "T104"
DUPLICATE_ID = "T105"
BAD_VERSION = "T106"

NODE_KEYS = {
    NodeKind.SERVICE_ROUTER: {"location", "address", "description"},
    NodeKind.CLUSTER: {
        "location",
        "sr",
        "address",
        "capacity",
        "reserved",
        "vim",
        "description",
    },
    NodeKind.SWITCH: {"location", "description"},
    NodeKind.USER_EQUIPMENT: {"location", "sr", "description"},
}
LINK_KEYS = {
    "between",
    "latency",
    "bandwidth",
    "loss",
    "cost",
    "state",
    "class",
    "description",
}
REGISTRATION_KEYS = {"fqdn", "cluster", "host", "port", "sfe", "description"}
_FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,252}$")


def fqdn_problem(fqdn: str) -> str | None:
    """What is wrong with `fqdn` as a service name (None if nothing), worded to follow it.

    The same rule as FLAME-TOSCA's `fqdn` property, so a name that validates in a template can be
    registered (SFR-10, SFR-11): lowercase DNS labels, at least two, 253 characters at most.
    """
    if len(fqdn) > 253:
        return "is longer than 253 characters"
    labels = fqdn.split(".")
    if len(labels) < 2:
        return "needs at least two labels (a dot)"
    for label in labels:
        if not _FQDN_LABEL.match(label):
            return f"has an invalid label '{label}' (lowercase letters, digits and '-', max 63)"
    return None


def address_problem(address: object) -> str | None:
    """What is wrong with `address` as a node's address (None if nothing), worded to follow
    "address". Any IPv4 or IPv6 address a host can listen on and be connected to."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return (
            f"must be an IP address, got {address!r} (host names are not resolved: write "
            "the address, e.g. 127.0.1.1 on one machine or the host's own, e.g. 10.0.0.2)"
        )
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        return (
            f"must be one host's address, got {address!r} (not the unspecified, a multicast "
            "or the broadcast address)"
        )
    return None


def sfe_id_problem(sfe: str) -> str | None:
    """What is wrong with `sfe` as an endpoint id (None if nothing).

    Ids travel in URL paths (`DELETE /v1/registrations/{sfe}`), so no '/', spaces or '%'.
    """
    if not _SFE_ID.match(sfe):
        return (
            "must be 1-253 letters, digits, '.', '_', '@', ':' or '-', "
            "starting with a letter or digit"
        )
    return None


# -- field checks: each turns a YAML value into the model's value or says what is wrong ----------


def bad(message: str, value: object = None, hint: str | None = None) -> Problem:
    return Problem(BAD_VALUE, message, value=value, hint=hint)


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value: Any, ctx: FieldContext, kind: str) -> float | Problem:
    """A scalar-unit (`8 GB`, `2 ms`, `1 Gbps`) in its base unit."""
    try:
        return parse_scalar(value, kind)
    except ScalarError as exc:
        return bad(f"{ctx.what} {ctx.key}: {exc}", value, exc.hint)


def _coordinate(limit: int) -> Check:
    def check(val: Any, ctx: FieldContext) -> Any:
        if isinstance(val, bool) or not isinstance(val, int | float) or not -limit <= val <= limit:
            return bad(
                f"{ctx.what}: {ctx.key} must be a number from -{limit} to {limit}, "
                f"got {kind_of(val)}",
                val if not isinstance(val, dict | list) else None,
            )
        return val

    return check


_POINT = Shape(
    (
        Field("latitude", _coordinate(90), default=None),
        Field("longitude", _coordinate(180), default=None),
    ),
    keys_first=False,
)


def read_point(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> GeoPoint | None:
    fields = read_map(value, pos, what, sink, _POINT)
    if fields is None or not fields.ok:
        return None
    return GeoPoint(float(fields["latitude"]), float(fields["longitude"]))


def _resources_shape(*, allow_zero: bool) -> Shape:
    """Cpus, memory and disk: finite, positive (or zero where `allow_zero`, as reserved)."""
    least = "non-negative" if allow_zero else "positive"

    def cpus(value: Any, ctx: FieldContext) -> Any:
        if not _finite(value) or value < 0 or (value == 0 and not allow_zero):
            return bad(
                f"{ctx.what}: cpus must be a {least} number",
                value if _finite(value) else str(value),
            )
        return float(value)

    def size(value: Any, ctx: FieldContext) -> Any:
        amount = _scalar(value, ctx, "scalar-unit.size")
        if isinstance(amount, Problem):
            return amount
        if not math.isfinite(amount) or amount < 0 or (amount == 0 and not allow_zero):
            return bad(f"{ctx.what}: {ctx.key} must be a {least} size", str(value))
        return int(amount)

    return Shape(
        (
            Field("cpus", cpus, default=None),
            Field("memory", size, default=None),
            Field("disk", size, default=None),
        ),
        stop_at_first=True,
    )


_CAPACITY = _resources_shape(allow_zero=False)
_RESERVED = _resources_shape(allow_zero=True)


def _resources(shape: Shape, label: str) -> Check:
    def check(value: Any, ctx: FieldContext) -> Any:
        fields = read_map(value, ctx.pos, f"{label} of {ctx.what}", ctx.sink, shape)
        if fields is None or not fields.ok:
            return FAILED
        return Resources(fields["cpus"], fields["memory"], fields["disk"])

    return check


def _optional(check: Check) -> Check:
    """`check`, except that a written null reads as absent."""

    def optional(value: Any, ctx: FieldContext) -> Any:
        return None if value is None else check(value, ctx)

    return optional


def _address(value: Any, ctx: FieldContext) -> Any:
    problem = address_problem(value)
    if problem is not None:
        return bad(f"{ctx.what}: {ctx.key} {problem}", str(value))
    return str(value)


def _vim(value: Any, ctx: FieldContext) -> Any:
    try:
        return Vim(value)
    except ValueError:
        return bad(
            f"{ctx.what}: unknown vim '{value}'",
            value,
            did_you_mean(value, [v.value for v in Vim]) or "use process or kubernetes",
        )


def _attached_sr(value: Any, ctx: FieldContext) -> Any:
    if not isinstance(value, str):
        return Problem(
            MISSING_KEY,
            f"{ctx.what} must name the service router it attaches to ('sr:')",
            hint="add 'sr: <service router id>'",
            where="anchor",
        )
    return value


def _any_sr(value: Any, _ctx: FieldContext) -> Any:
    return value if isinstance(value, str) else None


def _node_location(locations: dict[str, GeoPoint]) -> Check:
    """A node's location: the name of one under `locations:` or an inline point."""

    def check(loc: Any, ctx: FieldContext) -> Any:
        if loc is None:
            return None
        if isinstance(loc, str):
            if loc not in locations:
                return Problem(
                    UNKNOWN_REFERENCE,
                    f"{ctx.what}: unknown location '{loc}'",
                    value=loc,
                    hint=did_you_mean(loc, locations) or "define it under 'locations:'",
                )
            return locations[loc]
        point = read_point(loc, ctx.pos, f"location of {ctx.what}", ctx.sink)
        return FAILED if point is None else point

    return check


def node_shape(kind: NodeKind, locations: dict[str, GeoPoint]) -> Shape:
    # location, address and sr are read for every kind (an unknown key is still checked).
    fields = [
        Field("location", _node_location(locations)),
        Field("address", _optional(_address)),
    ]
    if kind is NodeKind.CLUSTER:
        missing = Problem(
            MISSING_KEY,
            "{what} has no capacity",
            hint="add 'capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}'",
            where="anchor",
        )
        fields += [
            Field("capacity", _resources(_CAPACITY, "capacity"), missing=missing),
            Field("reserved", _resources(_RESERVED, "reserved"), absent=DEFAULT_RESERVED),
            Field("vim", _vim, default="process"),
        ]
    attached = kind in (NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT)
    fields.append(Field("sr", _attached_sr if attached else _any_sr, default=None))
    return Shape(tuple(fields), allowed=NODE_KEYS[kind])


# -- links -----------------------------------------------------------------------------------------


def _between(between: Any, ctx: FieldContext) -> Any:
    if not (
        isinstance(between, list) and len(between) == 2 and all(isinstance(b, str) for b in between)
    ):
        return Problem(
            MISSING_KEY if between is None else WRONG_SHAPE,
            f"{ctx.what} needs 'between: [node, node]'",
            hint="for example 'between: [sr-ue, sw-1]'",
        )
    return tuple(between)


def link_ends_problems(
    between: tuple[str, str], what: str, nodes: dict[str, Node]
) -> list[Problem]:
    """What is wrong with a link's ends: unknown nodes, or a node linked to itself."""
    problems = [
        Problem(
            UNKNOWN_REFERENCE,
            f"{what}: unknown node '{end}'",
            value=end,
            hint=did_you_mean(end, nodes),
        )
        for end in between
        if end not in nodes
    ]
    if between[0] == between[1]:
        problems.append(bad(f"{what} connects '{between[0]}' to itself"))
    return problems


def _latency(raw: Any, ctx: FieldContext) -> Any:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        latency_ms = float(raw)  # a bare number means milliseconds
    else:
        seconds = _scalar(raw, ctx, "scalar-unit.time")
        if isinstance(seconds, Problem):
            return seconds
        # round away the binary noise of going through seconds (9 ms -> 9.000000000000002)
        latency_ms = round(seconds * 1000.0, 9)
    if not math.isfinite(latency_ms) or latency_ms < 0:
        return bad(
            f"{ctx.what}: latency must be a finite, non-negative time",
            str(raw),
            "for example 'latency: 5 ms'",
        )
    return latency_ms


def _bandwidth(raw: Any, ctx: FieldContext) -> Any:
    bandwidth = _scalar(raw, ctx, "scalar-unit.bitrate")
    if isinstance(bandwidth, Problem):
        return bandwidth
    if not math.isfinite(bandwidth) or bandwidth <= 0:
        return bad(
            f"{ctx.what}: bandwidth must be a positive rate",
            str(raw),
            "for example 'bandwidth: 1 Gbps'",
        )
    return bandwidth


def _cost(cost: Any, ctx: FieldContext) -> Any:
    if isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0:
        return bad(f"{ctx.what}: cost must be a non-negative number", cost)
    return float(cost)


def _loss_field(raw: Any, ctx: FieldContext) -> Any:
    loss_pct = _loss(raw)
    if loss_pct is None:
        return bad(
            f"{ctx.what}: loss must be a percentage from 0 to 100",
            str(raw),
            "for example 'loss: 0.1 %' (used by flame up --netns)",
        )
    return loss_pct


def _loss(raw: object) -> float | None:
    """A link's packet loss in percent: a number, or a string like '0.5 %' (None: invalid)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        raw = raw.strip().removesuffix("%").strip()
        try:
            raw = float(raw)
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw) or not 0 <= raw <= 100:
        return None
    return float(raw)


def _link_state(name: Any, ctx: FieldContext) -> Any:
    try:
        return LinkState(name)
    except ValueError:
        return bad(f"{ctx.what}: state must be up or down, got {name!r}")


LINK = Shape(
    (
        Field("between", _between, default=None, fatal=True),
        Field("latency", _latency, default=1),
        Field("bandwidth", _bandwidth),
        Field("cost", _optional(_cost)),
        Field("loss", _loss_field, default=0),
        Field("state", _link_state, default="up"),
        Field("class", lambda value, _ctx: str(value)),
    ),
    allowed=LINK_KEYS,
)


# -- registrations --------------------------------------------------------------------------------


_REGISTRATION_EXAMPLE = (
    "write '{fqdn: www.example.org, cluster: <cluster id>, host: 127.0.0.1, port: 8080}'"
)


_REQUIRED = Problem(
    MISSING_KEY, "{what} has no '{key}'", hint=_REGISTRATION_EXAMPLE, where="anchor"
)


def _named(problem_of: Callable[[str], str | None]) -> Check:
    """A string field checked by `problem_of` (fqdn, sfe id)."""

    def check(value: Any, ctx: FieldContext) -> Any:
        problem = (
            problem_of(value)
            if isinstance(value, str)
            else f"must be a string, got {kind_of(value)}"
        )
        if problem:
            return bad(f"{ctx.what}: {ctx.key} {problem}", str(value))
        return value

    return check


def _cluster_ref(nodes: dict[str, Node]) -> Check:
    clusters = [n for n, node in nodes.items() if node.kind is NodeKind.CLUSTER]

    def check(cluster: Any, ctx: FieldContext) -> Any:
        node = nodes.get(cluster) if isinstance(cluster, str) else None
        if node is None or node.kind is not NodeKind.CLUSTER:
            return Problem(
                UNKNOWN_REFERENCE,
                f"{ctx.what}: '{cluster}' is not a cluster",
                value=str(cluster),
                hint=did_you_mean(cluster, clusters)
                or f"clusters: {', '.join(clusters) or 'none'}",
            )
        return cluster

    return check


def _port(port: Any, ctx: FieldContext) -> Any:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return bad(
            f"{ctx.what}: port must be an integer from 1 to 65535, got {kind_of(port)}",
            str(port),
        )
    return port


def registration_shape(nodes: dict[str, Node]) -> Shape:
    return Shape(
        (
            Field("fqdn", _named(fqdn_problem), missing=_REQUIRED),
            Field("cluster", _cluster_ref(nodes), missing=_REQUIRED),
            Field("host", _address, missing=_REQUIRED),
            Field("port", _port, missing=_REQUIRED),
            Field("sfe", _named(sfe_id_problem)),
        ),
        allowed=REGISTRATION_KEYS,
    )
