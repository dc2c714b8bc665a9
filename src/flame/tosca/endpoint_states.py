"""The FLAME profile's endpoint states: per-cluster states of initial policies, their areas, and
the 'cluster -> {SF -> state}' maps that state-change policies share (ORCH-9, SFEMC-2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flame.common.diagnostics import Position
from flame.common.yamlshape import as_map, did_you_mean, missing_position
from flame.common.yamlsrc import YMap
from flame.topology.geo import Area, GeoPoint
from flame.tosca import codes
from flame.tosca.entities import PolicyTemplate
from flame.tosca.model import INITIAL_STATES, EndpointState, EndpointTarget, InitialPolicy
from flame.tosca.profile_context import INITIAL_POLICY, ProfileContext, is_number


@dataclass(slots=True)
class StateEntry:
    target: EndpointTarget
    cluster_pos: Position
    sf_pos: Position
    state_pos: Position


class EndpointStates:
    def __init__(self, ctx: ProfileContext) -> None:
        self.ctx = ctx
        self.sink = ctx.sink

    def _state(
        self, value: Any, pos: Position, allowed: tuple[EndpointState, ...], what: str
    ) -> EndpointState | None:
        names = [s.value for s in allowed]
        if isinstance(value, str) and value in names:
            return EndpointState(value)
        self.sink.error(
            codes.BAD_STATE,
            f"{what}: '{value}' is not an endpoint state",
            pos,
            value=value if isinstance(value, str | int | float | bool) else None,
            hint=did_you_mean(str(value), names) or f"use one of: {', '.join(names)}",
        )
        return None

    def state_map(
        self,
        value: Any,
        pos: Position,
        policy: PolicyTemplate,
        allowed: tuple[EndpointState, ...],
        what: str,
    ) -> list[StateEntry]:
        """Read 'cluster -> {SF -> state}' maps used by both policy kinds."""
        clusters = as_map(value, pos, what, self.sink)
        targets = self.ctx.target_names(policy)
        found: list[StateEntry] = []
        if allowed is INITIAL_STATES:
            for cluster_name, body in (clusters or {}).items():
                for sf in body if isinstance(body, dict) else ():
                    self.ctx.mentioned.add((str(cluster_name), str(sf)))
        for cluster, body in (clusters or {}).items():
            cpos = clusters.key_at(cluster) if clusters is not None else pos
            known = self.ctx.cluster_known(cluster, cpos)
            states = as_map(
                body,
                clusters.at(cluster) if clusters is not None else pos,
                f"{what} of cluster '{cluster}'",
                self.sink,
            )
            for sf, state_name in (states or {}).items():
                spos = states.key_at(sf) if states is not None else cpos
                vpos = states.at(sf) if states is not None else cpos
                if sf not in self.ctx.sfs and any(sf in t.broken for t in self.ctx.topologies):
                    continue
                if sf not in self.ctx.sfs:
                    self.sink.error(
                        codes.NOT_A_TARGET,
                        f"{what}: '{sf}' is not a service function",
                        spos,
                        value=sf,
                        hint=did_you_mean(sf, self.ctx.sfs)
                        or f"service functions: {', '.join(sorted(self.ctx.sfs))}",
                    )
                    continue
                if targets and sf not in targets:
                    self.sink.error(
                        codes.NOT_A_TARGET,
                        f"{what}: '{sf}' is not among the targets of policy '{policy.name}'",
                        spos,
                        value=sf,
                        hint=f"add '{sf}' to the policy's targets",
                    )
                    continue
                if self.sink.reported_at(vpos):
                    continue  # the typed 'clusters' map already rejected this value (E402)
                state = self._state(state_name, vpos, allowed, f"{what}, '{sf}' on '{cluster}'")
                if state is not None and known:
                    found.append(StateEntry(EndpointTarget(cluster, sf, state), cpos, spos, vpos))
        return found

    def initial_policies(self) -> list[InitialPolicy]:
        policies = self.ctx.policies(INITIAL_POLICY)
        if self.ctx.sfs and not policies:
            first = next(iter(self.ctx.sfs.values()))
            self.sink.error(
                codes.NO_INITIAL_POLICY,
                "the service has service functions but no eu.ict-flame.policies.InitialPolicy, so nothing "
                "would be deployed",
                first.pos,
                hint="add a policy of type eu.ict-flame.policies.InitialPolicy with per-cluster states",
            )
        result: list[InitialPolicy] = []
        for policy in policies:
            what = f"initial policy '{policy.name}'"
            area = self._area(policy)
            states: list[EndpointTarget] = []
            checked_clusters: set[str] = set()
            for entry in self.state_map(
                policy.properties.get("clusters"),
                policy.properties.at("clusters"),
                policy,
                INITIAL_STATES,
                what,
            ):
                target = entry.target
                key = (target.cluster, target.sf)
                if key in self.ctx.initial:
                    self.sink.error(
                        codes.DUPLICATE_NAME,
                        f"{what}: '{target.sf}' on '{target.cluster}' already has an initial state "
                        f"(at {self.ctx.initial[key][1]})",
                        entry.sf_pos,
                        value=target.sf,
                        hint="give each SF one initial state per cluster",
                    )
                    continue
                if target.cluster not in checked_clusters:
                    checked_clusters.add(target.cluster)
                    self._check_in_area(area, target.cluster, entry.cluster_pos, what)
                self.ctx.initial[key] = (target.state, entry.state_pos)
                states.append(target)
            result.append(
                InitialPolicy(policy.name, tuple(n for n, _ in policy.targets), tuple(states), area)
            )
        for name, node in self.ctx.sfs.items():
            if all(sf != name for _, sf in self.ctx.mentioned) and policies:
                self.sink.warning(
                    codes.SF_NEVER_DEPLOYED,
                    f"service function '{name}' has no initial state on any cluster and will never be deployed",
                    node.pos,
                    value=name,
                    hint="give it a state in an InitialPolicy's clusters",
                )
        return result

    def _area(self, policy: PolicyTemplate) -> Area | None:
        raw = policy.properties.get("area")
        if not isinstance(raw, YMap):
            return None
        pos = missing_position(policy.properties, "area")
        what = f"area of policy '{policy.name}'"
        centre = raw.get("centre")
        radius = raw.get("radius_km")
        polygon = raw.get("polygon")
        location = raw.get("location")
        forms = [
            name
            for name, present in (
                ("circle", centre is not None or radius is not None),
                ("polygon", polygon is not None),
                ("location", location is not None),
            )
            if present
        ]
        if len(forms) != 1:
            self.sink.error(
                codes.BAD_AREA,
                f"{what} must be exactly one of a circle (centre + radius_km), a polygon or a location"
                + (f"; it gives {' and '.join(forms)}" if forms else ""),
                pos,
                hint="for example 'area: {centre: {latitude: 51.45, longitude: -2.59}, radius_km: 25}'",
            )
            return None
        if forms == ["circle"]:
            if not isinstance(centre, dict) or not is_number(radius):
                self.sink.error(
                    codes.BAD_AREA,
                    f"{what}: a circle needs both 'centre' and 'radius_km'",
                    pos,
                    hint="add the missing one",
                )
                return None
            lat, lon = centre.get("latitude"), centre.get("longitude")
            if not (is_number(lat) and is_number(lon)):
                return None
            return Area(centre=GeoPoint(float(lat), float(lon)), radius_km=float(radius))
        if forms == ["polygon"]:
            points: list[GeoPoint] = []
            for item in polygon if isinstance(polygon, list) else []:
                if (
                    isinstance(item, dict)
                    and is_number(item.get("latitude"))
                    and is_number(item.get("longitude"))
                ):
                    points.append(GeoPoint(float(item["latitude"]), float(item["longitude"])))
            if len(points) < 3:
                self.sink.error(
                    codes.BAD_AREA,
                    f"{what}: a polygon needs at least 3 points, got {len(points)}",
                    raw.at("polygon"),
                )
                return None
            return Area(polygon=tuple(points))
        if not isinstance(location, str):
            return None
        infra = self.ctx.infra
        if infra is not None and location not in infra.locations:
            self.sink.error(
                codes.UNKNOWN_LOCATION,
                f"{what}: location '{location}' is not defined in topology '{infra.name}'",
                raw.at("location"),
                value=location,
                hint=did_you_mean(location, infra.locations)
                or f"locations: {', '.join(sorted(infra.locations))}",
            )
            return None  # which clusters lie inside an unknown location cannot be decided
        return Area(location=location)

    def _check_in_area(self, area: Area | None, cluster: str, pos: Position, what: str) -> None:
        infra = self.ctx.infra
        if area is None or infra is None or cluster not in infra.clusters:
            return
        node = infra.clusters[cluster]
        if area.location is not None:
            inside = node.location_name == area.location
        elif node.location is None:
            return  # a cluster without coordinates cannot be checked against a circle
        else:
            inside = area.contains(node.location)
        if not inside:
            where = f"location '{area.location}'" if area.location else "the policy's area"
            self.sink.error(
                codes.CLUSTER_OUTSIDE_AREA,
                f"{what}: cluster '{cluster}' lies outside {where}",
                pos,
                value=cluster,
                hint="choose a cluster inside the area or widen the area",
            )
