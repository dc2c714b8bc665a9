"""Kubernetes objects for one SFE: a Deployment and a Service in the cluster's namespace.

Pure functions from an EndpointSpec to plain dicts, so the tests can check them against the
Kubernetes OpenAPI schema without a cluster. Names follow the API's rules (DNS-1035 labels of
at most 63 characters); an SFE id that does not fit is shortened with a hash, and the exact id
stays in the ``flame/sfe`` annotation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from flame.sfemc.vim.base import EndpointSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_SFE = "flame/sfe"
ANNOTATION_DESIRED = "flame/desired"  # placed | running | stopped: what the SFEMC asked for
ANNOTATION_SPEC = "flame/spec"
LABEL_SFE = "flame/sfe"
CONTAINER = "sf"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _dns_label(text: str, prefix: str, limit: int = 63) -> str:
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = f"{prefix}{clean}" if prefix else clean
    if name == f"{prefix}{text}" and len(name) <= limit and name[:1].isalpha():
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    room = limit - len(prefix) - len(digest) - 1
    return f"{prefix}{clean[:room].strip('-')}-{digest}".replace("--", "-")


def namespace_name(cluster: str) -> str:
    return _dns_label(cluster, "flame-")


def object_name(sfe: str) -> str:
    return _dns_label(sfe, "sfe-")


def label_value(text: str) -> str:
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    return _dns_label(text, "")


def labels(spec: EndpointSpec) -> dict[str, str]:
    return {
        MANAGED_BY: "flame",
        "app.kubernetes.io/name": label_value(spec.sf),
        "flame/tenant": label_value(spec.tenant),
        "flame/sfc": label_value(spec.sfc),
        "flame/sfci": label_value(spec.sfci),
        "flame/sf": label_value(spec.sf),
        LABEL_SFE: label_value(spec.sfe),
        "flame/cluster": label_value(spec.cluster),
    }


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, math.ceil(cpus * 1000))}m"


def resources(spec: EndpointSpec) -> dict[str, Any]:
    """Requests equal limits: the SFEMC placed the SFE against exactly these needs."""
    amounts: dict[str, str] = {}
    if spec.cpus is not None:
        amounts["cpu"] = _quantity_cpu(spec.cpus)
    if spec.memory_bytes is not None:
        amounts["memory"] = str(spec.memory_bytes)
    if spec.disk_bytes is not None:
        amounts["ephemeral-storage"] = str(spec.disk_bytes)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _port_name(name: str, index: int) -> str:
    # IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', one letter at least.
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:15].strip("-")
    return clean if re.search(r"[a-z]", clean) else f"p{index}"


def deployment(spec: EndpointSpec, replicas: int, desired: str) -> dict[str, Any]:
    ns, name = namespace_name(spec.cluster), object_name(spec.sfe)
    meta_labels = labels(spec)
    selector = {LABEL_SFE: meta_labels[LABEL_SFE], MANAGED_BY: "flame"}
    env = [{"name": k, "value": v} for k, v in sorted(spec.environment.items())]
    env += [
        {"name": "FLAME_SFE", "value": spec.sfe},
        {"name": "FLAME_SF", "value": spec.sf},
        {"name": "FLAME_SFC", "value": spec.sfc},
        {"name": "FLAME_SFCI", "value": spec.sfci},
        {"name": "FLAME_TENANT", "value": spec.tenant},
        {"name": "FLAME_CLUSTER", "value": spec.cluster},
        {"name": "FLAME_FQDN", "value": spec.fqdn},
    ]
    if spec.ports:
        env.append({"name": "FLAME_PORT", "value": str(spec.ports[0].container_port)})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "env": env,
        "ports": [
            {"name": _port_name(p.name, i), "containerPort": p.container_port, "protocol": "TCP"}
            for i, p in enumerate(spec.ports)
        ],
    }
    if res := resources(spec):
        container["resources"] = res
    if spec.health is not None and spec.ports:
        port = next((p for p in spec.ports if p.name == spec.health.port), spec.ports[0])
        container["readinessProbe"] = {
            "httpGet": {"path": spec.health.path, "port": port.container_port},
            "periodSeconds": max(1, math.ceil(spec.health.interval_s)),
            "timeoutSeconds": max(1, math.ceil(spec.health.timeout_s)),
            "failureThreshold": spec.health.retries,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": meta_labels,
            "annotations": {
                ANNOTATION_SFE: spec.sfe,
                ANNOTATION_DESIRED: desired,
                ANNOTATION_SPEC: spec_json(spec),
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": meta_labels, "annotations": {ANNOTATION_SFE: spec.sfe}},
                "spec": {"containers": [container]},
            },
        },
    }


def service(spec: EndpointSpec) -> dict[str, Any] | None:
    """The Service in front of the SFE; None for an SF without ports (nothing to route to)."""
    if not spec.ports:
        return None
    meta_labels = labels(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(spec.sfe),
            "namespace": namespace_name(spec.cluster),
            "labels": meta_labels,
            "annotations": {ANNOTATION_SFE: spec.sfe},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_SFE: meta_labels[LABEL_SFE], MANAGED_BY: "flame"},
            "ports": [
                {
                    "name": _port_name(p.name, i),
                    "port": p.container_port,
                    "targetPort": p.container_port,
                    "protocol": "TCP",
                }
                for i, p in enumerate(spec.ports)
            ],
        },
    }


def namespace(cluster: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_name(cluster),
            "labels": {MANAGED_BY: "flame", "flame/cluster": label_value(cluster)},
        },
    }


def spec_json(spec: EndpointSpec) -> str:
    return json.dumps(
        {
            "sfe": spec.sfe,
            "cluster": spec.cluster,
            "ports": {p.name: p.container_port for p in spec.ports},
        },
        sort_keys=True,
    )
