"""deploy/kubernetes (issue 13, item 6): every object validates against the Kubernetes OpenAPI
schema (the same `kubernetes_validate` check, strict, and version as the VIM's manifests in
tests/sfemc/vim/test_kubernetes.py), and the objects agree with each other and with the
`flame` CLI. NEVER applied to a real cluster: there is none here (docs/operate.md)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from flame.topology.loader import load_topology

from ._cli import DEPLOY, ROOT, check_argv

# The version the VIM's manifests are validated against, read from where they are.
K8S_VERSION = re.search(
    r'^K8S_VERSION = "([^"]+)"', (ROOT / "tests/sfemc/vim/fake_k8s.py").read_text(), re.MULTILINE
).group(1)  # type: ignore[union-attr]

K8S = DEPLOY / "kubernetes"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
HEALTH = {"pce": "/health", "clmc": "/health", "orchestrator": "/health", "dashboard": "/"}


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def _from_files() -> list[dict[str, Any]]:
    """What kustomize would build, for the parts used here (namespace, labels, images)."""
    k = kustomization()
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in k.get("images", [])}
    docs = []
    for name in k["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                doc["metadata"]["namespace"] = k["namespace"]
            for c in _containers(doc):
                c["image"] = images.get(c["image"], c["image"])
            docs.append(doc)
    return docs


def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize` where installed (the real renderer), else the files."""
    if shutil.which("kubectl") is None:
        return _from_files()
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


DOCS = rendered()


def _pod(doc: dict[str, Any]) -> Any:
    """The pod template of a workload, None for other kinds."""
    return doc["spec"]["template"] if doc["kind"] in WORKLOADS else None


def _containers(doc: dict[str, Any], init: bool = True) -> Iterator[dict[str, Any]]:
    pod = _pod(doc)
    if pod is not None:
        yield from pod["spec"]["containers"]
        if init:
            yield from pod["spec"].get("initContainers", [])


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def ident(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# -- the schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=ident)
def test_every_object_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_would_catch_a_mistake() -> None:
    (pce,) = [d for d in by_kind("StatefulSet") if d["metadata"]["name"] == "flame-pce"]
    broken = copy.deepcopy(pce)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(pce)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_renderer_agrees() -> None:
    k = kustomization()
    assert sorted(k["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert [ident(d) for d in DOCS] == [ident(d) for d in _from_files()] or shutil.which("kubectl")
    assert {ident(d) for d in DOCS} == {ident(d) for d in _from_files()}
    assert all(
        d["metadata"].get("namespace") == "flame-system"
        for d in DOCS
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")
    )


# -- cross-references ----------------------------------------------------------------------------


def test_every_service_selects_the_pods_it_is_for() -> None:
    for svc in by_kind("Service"):
        selector = svc["spec"]["selector"].items()
        matched = [
            w
            for w in DOCS
            if _pod(w) is not None and selector <= _pod(w)["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, (ident(svc), [ident(w) for w in matched])
        ports = {p["name"] for c in _containers(matched[0]) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports, ident(svc)


def test_workload_selectors_and_statefulset_services() -> None:
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for w in DOCS:
        if _pod(w) is None:
            continue
        assert w["spec"]["selector"]["matchLabels"].items() <= _pod(w)["metadata"]["labels"].items()
        if w["kind"] == "StatefulSet":
            assert w["spec"]["serviceName"] in services, ident(w)
    assert services["flame-pce"]["spec"]["clusterIP"] == "None"  # one DNS name per PCE


def _defined(kind: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in by_kind(kind):
        keys = set(d.get("data", {})) | set(d.get("stringData", {}))
        out[d["metadata"]["name"]] = keys
    return out


def test_every_secret_and_configmap_referenced_exists_with_its_keys() -> None:
    secrets, maps = _defined("Secret"), _defined("ConfigMap")
    refs: list[tuple[dict[str, set[str]], str, str | None]] = []
    for w in DOCS:
        pod = _pod(w)
        if pod is None:
            continue
        for vol in pod["spec"].get("volumes", []):
            sources = vol.get("projected", {}).get("sources", [vol])
            for src in sources:
                if "secret" in src:
                    name = src["secret"].get("secretName") or src["secret"]["name"]
                    keys = [i["key"] for i in src["secret"].get("items", [])] or [None]
                    refs += [(secrets, name, k) for k in keys]
                if "configMap" in src:
                    refs.append((maps, src["configMap"]["name"], None))
                if "persistentVolumeClaim" in src:
                    claims = {p["metadata"]["name"] for p in by_kind("PersistentVolumeClaim")}
                    assert src["persistentVolumeClaim"]["claimName"] in claims
        for c in _containers(w):
            for e in c.get("envFrom", []):
                refs.append((maps, e["configMapRef"]["name"], None))
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((secrets, ref["name"], ref["key"]))
    assert refs
    for table, name, key in refs:
        assert name in table, name
        assert key is None or key in table[name], (name, key)


def test_secrets_hold_placeholders_only() -> None:
    for s in by_kind("Secret"):
        assert "data" not in s, ident(s)  # no base64 that could hide a real value
        for key, value in s["stringData"].items():
            assert "REPLACE-ME" in value, (ident(s), key)
            assert not re.search(r"flm_[A-Za-z0-9_-]{8,}|BEGIN [A-Z ]*PRIVATE KEY", value)


def _env_names(c: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in c.get("env", [])}
    maps = _defined("ConfigMap")
    for e in c.get("envFrom", []):
        names |= maps[e["configMapRef"]["name"]]
    return names


@pytest.mark.parametrize("doc", [d for d in DOCS if _pod(d) is not None], ids=ident)
def test_container_args_are_real_flame_serve_options(doc: dict[str, Any]) -> None:
    (c,) = list(_containers(doc, init=False))
    assert c["command"] == ["flame"]
    assert c["args"][0] == "serve"
    component = c["args"][1]
    assert check_argv(component, c["args"][2:]) == []
    # $(VAR) in args is expanded by Kubernetes only from the container's own environment
    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(c["args"])):
        assert var in _env_names(c), var
    # files named in args are mounted
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for arg in c["args"]:
        if arg.startswith("/etc/") or arg.startswith("/var/"):
            assert any(arg.startswith(m.rstrip("/") + "/") for m in mounts), arg


@pytest.mark.parametrize("doc", [d for d in DOCS if _pod(d) is not None], ids=ident)
def test_probes_resources_and_security_context(doc: dict[str, Any]) -> None:
    pod = _pod(doc)
    assert pod is not None
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in _containers(doc):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert set(c["resources"]) == {"requests", "limits"}
    (c,) = list(_containers(doc, init=False))
    component = c["args"][1]
    ready, live = c["readinessProbe"], c["livenessProbe"]
    ports = {p["name"] for p in c["ports"]}
    if component == "sr":
        # ready with a table (503 before), alive while it accepts connections
        assert ready["httpGet"]["path"] == "/.flame/health"
        assert ready["httpGet"]["httpHeaders"] == [{"name": "Host", "value": "_flame"}]
        assert live["tcpSocket"]["port"] in ports
    else:
        for probe in (ready, live):
            assert probe["httpGet"]["path"] == HEALTH[component]
            assert probe["httpGet"]["scheme"] == "HTTPS"  # it serves only TLS (--tls-cert)
            assert probe["httpGet"]["port"] in ports
    assert "--tls-cert" in c["args"] or component == "sr"
    # writable places exist for a read-only root: /tmp, and the state directory if it has one
    mounts = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in mounts


def test_orchestrator_rbac_covers_what_the_kubernetes_vim_calls() -> None:
    """The VIM's calls (src/flame/sfemc/vim/kubernetes.py): if it starts using another kind,
    this test's table and rbac.yaml must follow."""
    source = (ROOT / "src/flame/sfemc/vim/kubernetes.py").read_text()
    imported = set(re.findall(r"from lightkube\.resources\.\w+ import (.+)", source))
    kinds = {k.strip() for line in imported for k in line.split(",")}
    assert kinds == {"Deployment", "Namespace", "Pod", "Secret", "Service"}
    needed = {
        ("", "namespaces"): {"get", "create"},
        ("apps", "deployments"): {"get", "list", "patch", "delete"},  # apply is a patch
        ("", "services"): {"get", "patch", "delete"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"patch", "delete"},  # TLS SFEs' certificate Secrets (docs/tls.md)
    }
    (role,) = by_kind("ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    for key, verbs in needed.items():
        assert verbs <= granted.get(key, set()), key
    assert not granted[("", "secrets")] & {"get", "list", "watch"}  # writes keys, reads none
    assert "*" not in str(role["rules"])
    (binding,) = by_kind("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    (orch,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "flame-orchestrator"]
    assert orch["spec"]["template"]["spec"]["serviceAccountName"] == subject["name"]
    assert subject["name"] in {s["metadata"]["name"] for s in by_kind("ServiceAccount")}
    # only the orchestrator holds API credentials
    for w in DOCS:
        if _pod(w) is not None and w is not orch:
            assert _pod(w)["spec"]["automountServiceAccountToken"] is False


def test_topology_configmap_is_a_valid_topology(tmp_path: Path) -> None:
    (cm,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "flame-topology"]
    path = tmp_path / "topology.yaml"
    path.write_text(cm["data"]["topology.yaml"])
    topology = load_topology(path)
    sr_ids = {
        c["args"][c["args"].index("--id") + 1]
        for w in DOCS
        for c in _containers(w, init=False)
        if c["args"][:2] == ["serve", "sr"]
    }
    assert sr_ids
    assert sr_ids <= set(topology.service_routers)
