"""Kubernetes objects for one SFE: a Deployment and a Service in the cluster's namespace.

With hop-by-hop TLS (docs/tls.md) also a Secret of type ``kubernetes.io/tls`` holding the
SFE's endpoint certificate, owned by the Deployment, mounted read-only, with FLAME_TLS_* naming
the files. Pure functions from an EndpointSpec to plain dicts, so the tests can check them against the
Kubernetes OpenAPI schema without a cluster. Names follow the API's rules (DNS-1035 labels of
at most 63 characters); an SFE id that does not fit is shortened with a hash, and the exact id
stays in the ``flame/sfe`` annotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import Any

from flame.sfemc.vim._records import spec_to_json
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.endpoint_tls import EndpointCert

MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_SFE = "flame/sfe"
ANNOTATION_DESIRED = "flame/desired"  # placed | running | stopped: what the SFEMC asked for
ANNOTATION_SPEC = "flame/spec"
ANNOTATION_ENDPOINT = "flame/endpoint"  # the whole spec: a restarted controller rebuilds from it
ANNOTATION_TLS_WANTED = "flame/tls-wanted"  # "true": the image opts in to hop-by-hop TLS
ANNOTATION_TLS = "flame/tls"  # JSON: on, issued_at, not_after, fingerprint_sha256 (never the key)
ANNOTATION_CERT = "flame/cert-sha256"  # on the pod template: a new certificate rolls the pod
LABEL_SFE = "flame/sfe"
CONTAINER = "sf"
TLS_VOLUME = "flame-tls"
TLS_MOUNT = "/run/flame-tls"  # read-only in the container
TLS_ENV = {"FLAME_TLS_CERT": "tls.crt", "FLAME_TLS_KEY": "tls.key", "FLAME_TLS_CA": "ca.crt"}

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


def secret_name(sfe: str) -> str:
    return f"{object_name(sfe)}-tls"


def tls_secret(spec: EndpointSpec, cert: EndpointCert, owner_uid: str) -> dict[str, Any]:
    """The SFE's endpoint certificate as a ``kubernetes.io/tls`` Secret (plus ``ca.crt``),
    owned by its Deployment so that deleting the SFE deletes the key with it."""
    contents = {"tls.crt": cert.chain, "tls.key": cert.key, "ca.crt": cert.ca}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": secret_name(spec.sfe),
            "namespace": namespace_name(spec.cluster),
            "labels": labels(spec),
            "annotations": {ANNOTATION_SFE: spec.sfe, ANNOTATION_CERT: cert.fingerprint},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": object_name(spec.sfe),
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in contents.items()},
    }


def _add_tls(container: dict[str, Any], pod: dict[str, Any], spec: EndpointSpec) -> None:
    """Mount the Secret read-only, name its files in FLAME_TLS_*, and check readiness by TCP:
    an SFE asking for a client certificate refuses the kubelet's HTTPS probe (it has none)."""
    container["env"] += [{"name": k, "value": f"{TLS_MOUNT}/{file}"} for k, file in TLS_ENV.items()]
    container["volumeMounts"] = [{"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True}]
    # 0444: the container's uid is the image's, unknown here, and the container holds only
    # this SFE (Kubernetes' own default is 0644); the mount is read-only either way.
    secret = {"secretName": secret_name(spec.sfe), "defaultMode": 0o444}
    pod["volumes"] = [{"name": TLS_VOLUME, "secret": secret}]
    if "readinessProbe" in container:
        probe = container["readinessProbe"]
        probe["tcpSocket"] = {"port": probe.pop("httpGet")["port"]}


def deployment(
    spec: EndpointSpec,
    replicas: int,
    desired: str,
    *,
    tls_wanted: bool = False,
    tls: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`tls_wanted`: the image opts in to hop-by-hop TLS; `tls`: the certificate state (on,
    with its fingerprint: the Secret is mounted; off, with why: plain)."""
    ns, name = namespace_name(spec.cluster), object_name(spec.sfe)
    meta_labels = labels(spec)
    selector = {LABEL_SFE: meta_labels[LABEL_SFE], MANAGED_BY: "flame"}
    env = [  # FLAME_TLS_* only ever from the platform, never the image or template
        {"name": k, "value": v}
        for k, v in sorted(spec.environment.items())
        if not k.startswith("FLAME_TLS_")
    ]
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
    pod: dict[str, Any] = {"containers": [container]}
    annotations = {
        ANNOTATION_SFE: spec.sfe,
        ANNOTATION_DESIRED: desired,
        ANNOTATION_SPEC: spec_json(spec),
        ANNOTATION_ENDPOINT: json.dumps(spec_to_json(spec), sort_keys=True),
    }
    pod_annotations = {ANNOTATION_SFE: spec.sfe}
    if tls_wanted:
        annotations[ANNOTATION_TLS_WANTED] = "true"
    if tls is not None:
        annotations[ANNOTATION_TLS] = json.dumps(tls, sort_keys=True)
        if tls.get("on"):
            _add_tls(container, pod, spec)
            pod_annotations[ANNOTATION_CERT] = str(tls["fingerprint_sha256"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": meta_labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": meta_labels, "annotations": pod_annotations},
                "spec": pod,
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
