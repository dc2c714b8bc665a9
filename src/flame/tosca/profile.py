"""The FLAME profile's own rules, and building the service model from checked templates.

Generic TOSCA checks (types, properties, requirements) have already run; the profile adds what
only FLAME knows, in stages that share a `ProfileContext`: the chain's identity (here), its
service functions (service_functions.py), endpoint states (endpoint_states.py), then alerts
and state changes (alerts.py) (SFEMC-1, SFEMC-2, CLMC-19).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import kind_of, missing_position
from flame.common.yamlsrc import YMap
from flame.topology.model import Topology as Infrastructure
from flame.tosca import codes
from flame.tosca.alerts import Alerts
from flame.tosca.endpoint_states import EndpointStates
from flame.tosca.entities import Topology
from flame.tosca.model import ChainEdge, ServiceModel
from flame.tosca.profile_context import (
    ALERT_REF,
    DEFAULT_RUNTIMES,
    KNOWN_RUNTIMES,
    SF_TYPE,
    ProfileContext,
)
from flame.tosca.service_functions import ServiceFunctions

__all__ = ["DEFAULT_RUNTIMES", "KNOWN_RUNTIMES", "ProfileChecker"]

_SFC_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")


class ProfileChecker:
    def __init__(
        self,
        topologies: list[Topology],
        sink: DiagnosticSink,
        *,
        infra: Infrastructure | None = None,
        runtimes: Collection[str] = DEFAULT_RUNTIMES,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.topologies = topologies
        self.ctx = ProfileContext(topologies, sink, infra, runtimes, inputs or {})
        self.sink = sink

    # -- entry point -------------------------------------------------------------------------

    def build(self) -> ServiceModel | None:
        sfc, sfci = self._chain_identity()
        functions = ServiceFunctions(self.ctx).read()
        states = EndpointStates(self.ctx)
        initial = states.initial_policies()
        reader = Alerts(self.ctx, states)
        alerts = reader.read()
        changes = reader.state_changes(alerts)
        for alert in alerts.values():
            if alert.rule.notify_sfemc and not alert.referenced:
                self.sink.warning(
                    codes.UNUSED_ALERT,
                    f"alert '{alert.rule.name}' notifies the SFEMC but no StateChange policy refers to it",
                    alert.pos,
                    value=alert.rule.name,
                    hint="add a StateChange trigger with "
                    f"'condition: {{constraint: {ALERT_REF}{alert.rule.name}}}'",
                )
        if self.sink.has_errors() or sfc is None:
            return None
        chain = tuple(ChainEdge(sf.name, up) for sf in functions for up in sf.upstream)
        description = ""
        for topo in self.topologies:
            text = topo.doc.root.get("description")
            if isinstance(text, str):
                description = text.strip()
                break
        return ServiceModel(
            sfc=sfc,
            sfci=sfci or sfc,
            description=description,
            service_functions=tuple(functions),
            chain=chain,
            initial_policies=tuple(initial),
            state_change_policies=tuple(changes),
            alert_rules=tuple(a.rule for a in alerts.values()),
            sources=tuple(t.doc.name for t in self.topologies),
        )

    # -- sfc / sfci --------------------------------------------------------------------------

    def _chain_identity(self) -> tuple[str | None, str | None]:
        sfc: tuple[str, Position] | None = None
        sfci: tuple[str, Position] | None = None
        for topo in self.topologies:
            root = topo.doc.root
            meta = root.get("metadata")
            needs = any(n.type.is_a(SF_TYPE) for n in topo.nodes.values()) or any(
                p.type is not None and p.type.name.startswith("eu.ict-flame.")
                for p in topo.policies
            )
            found_sfc = found_sfci = None
            if isinstance(meta, YMap):
                found_sfc = self._metadata_name(meta, ("servicefunctionchain", "sfc"))
                found_sfci = self._metadata_name(meta, ("sfc_instance", "sfci"))
            if found_sfc is None:
                if needs and (meta is None or isinstance(meta, YMap)):  # else E201 was reported
                    self.sink.error(
                        codes.MISSING_SFC,
                        "the template does not name its service function chain",
                        missing_position(root, "metadata")
                        if "metadata" in root
                        else Position(topo.doc.name, 1, 1),
                        hint="add 'metadata: {servicefunctionchain: <name>}'",
                    )
                continue
            for label, found, current in (
                ("servicefunctionchain", found_sfc, sfc),
                ("sfc_instance", found_sfci, sfci),
            ):
                if found is None:
                    continue
                value, pos = found
                if not isinstance(value, str) or not _SFC_NAME.match(value):
                    self.sink.error(
                        codes.BAD_NAME,
                        f"{label} must be a name of letters, digits, '.', '_' or '-', got {kind_of(value)}",
                        pos,
                        value=value if isinstance(value, str | int | float) else None,
                    )
                    continue
                if current is not None and current[0] != value:
                    self.sink.error(
                        codes.SFC_MISMATCH,
                        f"{label} '{value}' differs from '{current[0]}' at {current[1]}",
                        pos,
                        value=value,
                        hint="a resource specification and its alert specification must name the same chain",
                    )
                    continue
                if label == "servicefunctionchain":
                    sfc = (value, pos)
                else:
                    sfci = (value, pos)
        return (sfc[0] if sfc else None, sfci[0] if sfci else None)

    def _metadata_name(self, meta: YMap, keys: tuple[str, str]) -> tuple[Any, Position] | None:
        """The value under a metadata key or its short alias; both, if they differ, is E807."""
        present = [(meta[k], meta.at(k), k) for k in keys if k in meta]
        if len(present) == 2 and present[0][0] != present[1][0]:
            self.sink.error(
                codes.SFC_MISMATCH,
                f"metadata gives {keys[0]} '{present[0][0]}' and {keys[1]} '{present[1][0]}'",
                present[1][1],
                value=present[1][0] if isinstance(present[1][0], str) else None,
                hint=f"'{keys[1]}' is a short name for '{keys[0]}'; keep one of them",
            )
        return (present[0][0], present[0][1]) if present else None
