"""The JSON forms of `EndpointSpec` and `VimStatus` between the SFEMC and a cluster agent.

`flame.sfemc.vim.remote.RemoteVim` sends specs and reads statuses; `flame.sfemc.agent` reads
specs and sends statuses. Unknown keys are refused when reading a spec (a spec the agent does
not understand fully must not run half-understood) and ignored when reading a status (an older
SFEMC may talk to a newer agent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec, VimState, VimStatus

__all__ = ["WireError", "spec_from_json", "spec_to_json", "status_from_json", "status_to_json"]

_SPEC_FIELDS = {f.name for f in dataclasses.fields(EndpointSpec)}
_REQUIRED = {"sfe", "tenant", "sfc", "sfci", "sf", "cluster", "fqdn", "image"}


class WireError(ValueError):
    """A JSON document that is not a spec or a status."""


def spec_to_json(spec: EndpointSpec) -> dict[str, Any]:
    return {
        "sfe": spec.sfe,
        "tenant": spec.tenant,
        "sfc": spec.sfc,
        "sfci": spec.sfci,
        "sf": spec.sf,
        "cluster": spec.cluster,
        "fqdn": spec.fqdn,
        "image": spec.image,
        "ports": [dataclasses.asdict(p) for p in spec.ports],
        "environment": dict(sorted(spec.environment.items())),
        "health": dataclasses.asdict(spec.health) if spec.health else None,
        "cpus": spec.cpus,
        "memory_bytes": spec.memory_bytes,
        "disk_bytes": spec.disk_bytes,
    }


def spec_from_json(doc: object) -> EndpointSpec:
    if not isinstance(doc, Mapping):
        raise WireError("a spec must be a JSON object")
    unknown = set(doc) - _SPEC_FIELDS
    if unknown:
        raise WireError(f"unknown spec keys: {', '.join(sorted(unknown))}")
    missing = _REQUIRED - set(doc)
    if missing:
        raise WireError(f"spec keys missing: {', '.join(sorted(missing))}")
    for key in _REQUIRED:
        if not isinstance(doc[key], str) or not doc[key]:
            raise WireError(f"spec key {key!r} must be a non-empty string")
    try:
        health = doc.get("health")
        environment = doc.get("environment") or {}
        if not isinstance(environment, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
        ):
            raise WireError("spec key 'environment' must map names to strings")
        return EndpointSpec(
            sfe=doc["sfe"],
            tenant=doc["tenant"],
            sfc=doc["sfc"],
            sfci=doc["sfci"],
            sf=doc["sf"],
            cluster=doc["cluster"],
            fqdn=doc["fqdn"],
            image=doc["image"],
            ports=tuple(
                PortSpec(str(p["name"]), int(p["container_port"]), str(p.get("protocol", "http")))
                for p in doc.get("ports") or ()
            ),
            environment=dict(environment),
            health=None
            if health is None
            else HealthSpec(
                path=str(health.get("path", "/health")),
                port=None if health.get("port") is None else str(health["port"]),
                interval_s=float(health.get("interval_s", 2.0)),
                timeout_s=float(health.get("timeout_s", 1.0)),
                retries=int(health.get("retries", 3)),
            ),
            cpus=None if doc.get("cpus") is None else float(doc["cpus"]),
            memory_bytes=None if doc.get("memory_bytes") is None else int(doc["memory_bytes"]),
            disk_bytes=None if doc.get("disk_bytes") is None else int(doc["disk_bytes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"not a valid spec: {exc!r}") from None


def status_to_json(status: VimStatus) -> dict[str, Any]:
    return {
        "sfe": status.sfe,
        "state": status.state.value,
        "host": status.host,
        "ports": dict(status.ports),
        "pid": status.pid,
        "restarts": status.restarts,
        "reason": status.reason,
        "limits": status.limits,
        **({"tls": True} if status.tls else {}),  # absent when plain: older SFEMCs as before
    }


def status_from_json(doc: object) -> VimStatus:
    if not isinstance(doc, Mapping):
        raise WireError("a status must be a JSON object")
    try:
        return VimStatus(
            sfe=str(doc["sfe"]),
            state=VimState(doc["state"]),
            host=None if doc.get("host") is None else str(doc["host"]),
            ports={str(k): int(v) for k, v in (doc.get("ports") or {}).items()},
            pid=None if doc.get("pid") is None else int(doc["pid"]),
            restarts=int(doc.get("restarts") or 0),
            reason=None if doc.get("reason") is None else str(doc["reason"]),
            limits=None if doc.get("limits") is None else str(doc["limits"]),
            tls=doc.get("tls") is True,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"not a valid status: {exc!r}") from None
