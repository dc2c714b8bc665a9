"""The FLAME profile's service functions: runtime, FQDN, ports, health check, resources and
environment of each `eu.ict-flame.nodes.ServiceFunction` node template (ORCH-8, SFEMC-1)."""

from __future__ import annotations

import re

from flame.common.diagnostics import Position
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlshape import did_you_mean
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.entities import NodeTemplate
from flame.tosca.model import HealthCheck, Port, Resources, ServiceFunction
from flame.tosca.profile_context import KNOWN_RUNTIMES, SF_TYPE, ProfileContext, is_number
from flame.tosca.values import function_call

_FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ServiceFunctions:
    """Reads every service function of the chain into the model, recording them in the context."""

    def __init__(self, ctx: ProfileContext) -> None:
        self.ctx = ctx
        self.sink = ctx.sink

    def read(self) -> list[ServiceFunction]:
        result: list[ServiceFunction] = []
        fqdns: dict[str, tuple[str, Position]] = {}
        for topo in self.ctx.topologies:
            for node in topo.nodes.values():
                if not node.type.is_a(SF_TYPE):
                    continue
                if node.name in self.ctx.sfs:
                    self.sink.error(
                        codes.DUPLICATE_NAME,
                        f"service function '{node.name}' is defined in two documents",
                        node.pos,
                        value=node.name,
                    )
                    continue
                self.ctx.sfs[node.name] = node
                sf = self._service_function(node, fqdns)
                if sf is not None:
                    result.append(sf)
        return result

    def _service_function(
        self, node: NodeTemplate, fqdns: dict[str, tuple[str, Position]]
    ) -> ServiceFunction | None:
        props = node.properties
        what = f"service function '{node.name}'"
        runtime = self.ctx.prop(node, "runtime", "process")
        if (
            isinstance(runtime, str)
            and runtime in KNOWN_RUNTIMES
            and runtime not in self.ctx.runtimes
        ):
            self.sink.error(
                codes.UNSUPPORTED_RUNTIME,
                f"{what}: runtime '{runtime}' has no such VIM on this platform",
                props.at("runtime"),
                value=runtime,
                hint=f"use one of: {', '.join(sorted(self.ctx.runtimes))}",
            )
        fqdn = self.ctx.prop(node, "fqdn")
        fqdn_pos = props.at("fqdn")
        if isinstance(fqdn, str):
            problem = _fqdn_problem(fqdn)
            if problem:
                self.sink.error(
                    codes.BAD_FQDN,
                    f"{what}: fqdn '{fqdn}' {problem}",
                    fqdn_pos,
                    value=fqdn,
                    hint="use lowercase DNS labels separated by dots, e.g. video.example.flame",
                )
            elif fqdn in fqdns:
                other, other_pos = fqdns[fqdn]
                self.sink.error(
                    codes.DUPLICATE_FQDN,
                    f"{what}: fqdn '{fqdn}' is already served by '{other}' ({other_pos})",
                    fqdn_pos,
                    value=fqdn,
                    hint="each service function needs its own FQDN; routers choose endpoints by it",
                )
            else:
                fqdns[fqdn] = (node.name, fqdn_pos)
                self.ctx.fqdns.add(fqdn)
        elif (
            "fqdn" in props
            and fqdn is None
            and function_call(props["fqdn"]) is not None
            and not self.sink.reported_at(fqdn_pos)  # E601 already said why
        ):
            self.sink.error(
                codes.BAD_FUNCTION,
                f"{what}: fqdn must be known before deployment; this function cannot be resolved",
                fqdn_pos,
                hint="give the input a default or pass its value",
            )
        ports = self._ports(node)
        health = self._health(node, ports)
        resources = self._resources(node)
        environment = self._environment(node)
        image = self.ctx.prop(node, "image")
        upstream = tuple(
            r.target for r in node.requirements if r.name == "upstream" and r.target is not None
        )
        for req in node.requirements:
            if req.name == "upstream" and req.target == node.name:
                self.sink.error(
                    codes.INCOMPATIBLE_TARGET,
                    f"{what} lists itself as upstream",
                    req.target_pos or req.pos,
                    hint="an SF cannot send requests to itself through the chain",
                    value=node.name,
                )
        if not isinstance(image, str) or not isinstance(fqdn, str) or not isinstance(runtime, str):
            return None
        return ServiceFunction(
            name=node.name,
            image=image,
            fqdn=fqdn,
            runtime=runtime,
            ports=ports,
            environment=environment,
            health_check=health,
            resources=resources,
            upstream=upstream,
            source=str(node.pos),
        )

    def _environment(self, node: NodeTemplate) -> tuple[tuple[str, str], ...]:
        raw = node.properties.get("environment")
        if not isinstance(raw, dict):
            return ()
        result: list[tuple[str, str]] = []
        for key, value in raw.items():
            resolved = self.ctx.resolve(value, node)
            if resolved is None or isinstance(resolved, dict | list):
                value_pos = raw.at(key) if isinstance(raw, YMap) else node.pos
                if function_call(value) is not None and not self.sink.reported_at(value_pos):
                    self.sink.error(
                        codes.BAD_FUNCTION,
                        f"service function '{node.name}': environment variable '{key}' must be known "
                        "before deployment, and this function cannot be resolved then",
                        value_pos,
                        hint="use get_input (with a default), get_property or concat of those",
                    )
                continue
            result.append(
                (str(key), str(resolved).lower() if isinstance(resolved, bool) else str(resolved))
            )
        return tuple(result)

    def _ports(self, node: NodeTemplate) -> tuple[Port, ...]:
        raw = self.ctx.prop(node, "ports")
        if not isinstance(raw, list):
            return ()
        ports: list[Port] = []
        seen: dict[tuple[int, str], int] = {}
        names: set[str] = set()
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                continue
            number = self.ctx.resolve(item.get("port"), node)
            if not isinstance(number, int) or isinstance(number, bool):
                continue
            pos = raw.at(index) if isinstance(raw, YSeq) else node.pos
            name = item.get("name")
            protocol = item.get("protocol", "http")
            family = "udp" if protocol == "udp" else "tcp"  # http and https ride on tcp
            if (number, family) in seen:
                self.sink.error(
                    codes.DUPLICATE_PORT,
                    f"service function '{node.name}': port {number} is listed twice",
                    pos,
                    value=number,
                    hint="each port may appear once",
                )
                continue
            if isinstance(name, str):
                if name in names:
                    self.sink.error(
                        codes.DUPLICATE_PORT,
                        f"service function '{node.name}': port name '{name}' is used twice",
                        pos,
                        value=name,
                    )
                names.add(name)
            seen[(number, family)] = index
            ports.append(
                Port(
                    number,
                    protocol if isinstance(protocol, str) else "http",
                    name if isinstance(name, str) else None,
                )
            )
        return tuple(ports)

    def _health(self, node: NodeTemplate, ports: tuple[Port, ...]) -> HealthCheck | None:
        raw = self.ctx.prop(node, "health_check")
        if not isinstance(raw, dict):
            return None
        port = raw.get("port")
        if isinstance(port, str) and port not in {p.name for p in ports}:
            pos = raw.at("port") if isinstance(raw, YMap) else node.pos
            self.sink.error(
                codes.NOT_A_TARGET,
                f"service function '{node.name}': health_check port '{port}' names no port of this SF",
                pos,
                value=port,
                hint=did_you_mean(port, [p.name for p in ports if p.name])
                or "give the port a 'name:' and use it here",
            )

        def seconds(key: str, default: float) -> float:
            value = raw.get(key)
            try:
                return parse_scalar(value, "scalar-unit.time") if value is not None else default
            except ScalarError:
                return default

        retries = raw.get("retries", 3)
        return HealthCheck(
            path=str(raw.get("path", "/health")),
            port=port if isinstance(port, str) else None,
            interval_s=seconds("interval", 2.0),
            timeout_s=seconds("timeout", 1.0),
            retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else 3,
        )

    def _resources(self, node: NodeTemplate) -> Resources:
        caps = node.raw.get("capabilities")
        host = caps.get("host") if isinstance(caps, dict) else None
        props = host.get("properties") if isinstance(host, dict) else None
        if not isinstance(props, dict):
            return Resources()

        def size(key: str) -> int | None:
            value = self.ctx.resolve(props.get(key), node)
            try:
                return int(parse_scalar(value, "scalar-unit.size")) if value is not None else None
            except ScalarError:
                return None

        cpus = self.ctx.resolve(props.get("num_cpus"), node)
        return Resources(
            cpus=float(cpus) if is_number(cpus) else None,
            memory_bytes=size("mem_size"),
            disk_bytes=size("disk_size"),
        )


def _fqdn_problem(fqdn: str) -> str | None:
    if len(fqdn) > 253:
        return "is longer than 253 characters"
    labels = fqdn.split(".")
    if len(labels) < 2:
        return "needs at least two labels (a dot)"
    for label in labels:
        if not _FQDN_LABEL.match(label):
            return f"has an invalid label '{label}' (lowercase letters, digits and '-', max 63)"
    return None
