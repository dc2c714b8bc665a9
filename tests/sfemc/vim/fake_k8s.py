"""A FAKE Kubernetes API server for the KubernetesVim tests. It is not Kubernetes.

It answers, on a loopback port, the few endpoints the driver uses (namespaces, Deployments,
Services, Pods and pod logs) the way the real API server shapes them: ``Status`` bodies for
errors, 404 for a missing namespace, server-side apply and merge patches, label selectors. A
toy "controller" turns a Deployment's replicas into Pods that become ready after
`ready_delay_s`, except for images whose name contains ``fail``, which stay in
``ErrImagePull``, and replaces a Deployment's pods when its pod template changes (a rollout,
all at once). Secrets are stored as given; objects get a ``uid``, and deleting a Deployment
deletes the objects whose ``ownerReferences`` name its uid (the garbage collector, at once). Every object written is validated against the Kubernetes OpenAPI schema
(kubernetes-validate, offline), so a malformed manifest is refused with 422 as a real server
would refuse it. What it does not do: scheduling, probes, watches, RBAC, resource versions, mounting volumes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from flame.common.ports import free_port

K8S_VERSION = "1.37.0"
TOKEN = "fake-token"  # the bearer token the fake demands, as a real API server would
_KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "services": ("v1", "Service"),
    "pods": ("v1", "Pod"),
    "secrets": ("v1", "Secret"),
}


def status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status_code=code,
    )


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    have = obj.get("metadata", {}).get("labels", {})
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if have.get(key) != value:
            return False
    return True


@dataclass
class FakeKubernetes:
    ready_delay_s: float = 0.2
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, type
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- the toy controller -------------------------------------------------------------

    def _reconcile(self, ns: str, name: str) -> None:
        dep = self.objects.get(("deployments", ns, name))
        pods = [
            k
            for k, v in self.objects.items()
            if k[0] == "pods" and k[1] == ns and v["metadata"].get("ownerName") == name
        ]
        want = 0 if dep is None else int(dep["spec"].get("replicas", 1))
        template = {} if dep is None else dep["spec"]["template"]
        stale = [k for k in pods if self.objects[k].get("_template") != template]
        for key in stale:  # a new pod template rolls the pods
            del self.objects[key]
        pods = [k for k in pods if k not in stale]
        for key in pods[want:]:
            del self.objects[key]
        if dep is None:
            return
        for _ in range(want - len(pods)):
            pod_name = f"{name}-{next(self._ids):05d}"
            self.objects[("pods", ns, pod_name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "ownerName": name,
                    "labels": dict(template["metadata"].get("labels", {})),
                    "creationTimestamp": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                },
                "spec": copy.deepcopy(template["spec"]),
                "_created": time.monotonic(),
                "_template": copy.deepcopy(template),
            }

    def _pod_view(self, pod: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in pod.items() if k not in ("_created", "_template")}
        view["metadata"] = {k: v for k, v in pod["metadata"].items() if k != "ownerName"}
        container = pod["spec"]["containers"][0]
        if "fail" in container["image"]:
            state = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": f"pull access denied for {container['image']}",
                }
            }
            ready = False
        else:
            ready = time.monotonic() - pod["_created"] >= self.ready_delay_s
            state = {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}}
        view["status"] = {
            "phase": "Running" if ready else "Pending",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        return view

    def _deployment_view(self, dep: dict[str, Any]) -> dict[str, Any]:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        pods = [
            self._pod_view(v)
            for k, v in self.objects.items()
            if k[0] == "pods" and k[1] == ns and v["metadata"].get("ownerName") == name
        ]
        ready = sum(1 for p in pods if p["status"]["containerStatuses"][0]["ready"])
        view = copy.deepcopy(dep)
        view["status"] = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready}
        return view

    def view(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        if plural == "pods":
            return self._pod_view(obj)
        if plural == "deployments":
            return self._deployment_view(obj)
        return obj

    # -- HTTP ----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p]
        self.requests.append(
            (request.method, request.url.path, request.headers.get("content-type", ""))
        )
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return status(401, "Unauthorized", "Unauthorized")
        body = await request.body()
        doc = json.loads(body) if body else None
        # /api/v1/namespaces[/name]   /api/v1/namespaces/ns/plural[/name[/log]]
        # /apis/group/version/namespaces/ns/plural[/name]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if rest[:1] != ["namespaces"]:
            return status(404, "NotFound", f"the fake does not serve {request.url.path}")
        if len(rest) <= 2:
            return self._namespace(request.method, rest[1] if len(rest) == 2 else None, doc)
        ns, plural = rest[1], rest[2]
        name = rest[3] if len(rest) > 3 else None
        if ns not in self.namespaces:
            return status(404, "NotFound", f'namespaces "{ns}" not found')
        if plural not in _KINDS:
            return status(404, "NotFound", f"the fake does not serve {plural}")
        if len(rest) == 5 and rest[4] == "log":
            return self._log(ns, name or "", request)
        if name is None:
            if request.method != "GET":
                return status(405, "MethodNotAllowed", "only GET on collections")
            items = [
                self.view(plural, v)
                for k, v in self.objects.items()
                if k[0] == plural
                and k[1] == ns
                and _matches(v, request.query_params.get("labelSelector"))
            ]
            api_version, kind = _KINDS[plural]
            return JSONResponse(
                {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {}, "items": items}
            )
        key = (plural, ns, name)
        if request.method == "GET":
            if key not in self.objects:
                return status(404, "NotFound", f'{plural} "{name}" not found')
            return JSONResponse(self.view(plural, self.objects[key]))
        if request.method == "DELETE":
            gone = self.objects.pop(key, None)
            if gone is None:
                return status(404, "NotFound", f'{plural} "{name}" not found')
            if plural == "deployments":
                self._reconcile(ns, name)
                self._collect(gone["metadata"].get("uid"))
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        if request.method == "PATCH":
            return self._patch(request, key, doc or {})
        return status(405, "MethodNotAllowed", request.method)

    def _namespace(self, method: str, name: str | None, doc: Any) -> Response:
        if method == "POST" and name is None:
            ns = doc["metadata"]["name"]
            if ns in self.namespaces:
                return status(409, "AlreadyExists", f'namespaces "{ns}" already exists')
            self.namespaces[ns] = doc
            return JSONResponse(doc, status_code=201)
        if method == "GET" and name is not None:
            if name not in self.namespaces:
                return status(404, "NotFound", f'namespaces "{name}" not found')
            return JSONResponse(self.namespaces[name])
        return status(405, "MethodNotAllowed", method)

    def _patch(self, request: Request, key: tuple[str, str, str], doc: dict[str, Any]) -> Response:
        plural, ns, name = key
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/apply-patch"):
            if request.query_params.get("fieldManager") is None:
                return status(422, "Invalid", "fieldManager is required for apply patch")
            new = copy.deepcopy(doc)  # one manager owns every field: apply replaces them all
        elif key in self.objects and "merge-patch" in ctype:
            new = _merge(copy.deepcopy(self.objects[key]), doc)
        elif key not in self.objects:
            return status(404, "NotFound", f'{plural} "{name}" not found')
        else:
            return status(415, "UnsupportedMediaType", ctype)
        if new.get("metadata", {}).get("name") != name:
            return status(400, "BadRequest", "the name in the body does not match the URL")
        new["metadata"]["namespace"] = ns
        old_uid = self.objects.get(key, {}).get("metadata", {}).get("uid")
        new["metadata"]["uid"] = old_uid or str(uuid.uuid4())
        try:
            kubernetes_validate.validate(new, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return status(422, "Invalid", f'{_KINDS[plural][1]} "{name}" is invalid: {exc.message}')
        self.objects[key] = new
        if plural == "deployments":
            self._reconcile(ns, name)
        return JSONResponse(self.view(plural, new))

    def _collect(self, owner_uid: str | None) -> None:
        """The garbage collector: objects owned by a deleted object go with it."""
        for key, obj in list(self.objects.items()):
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            if owner_uid and any(o.get("uid") == owner_uid for o in owners):
                del self.objects[key]

    def _log(self, ns: str, name: str, request: Request) -> Response:
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        image = pod["spec"]["containers"][0]["image"]
        if "fail" in image:
            return status(400, "BadRequest", f'container "sf" in pod "{name}" is waiting to start')
        lines = [f"fake kubelet: started {image}"] + [f"log line {i}" for i in range(1, 30)]
        tail = request.query_params.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :]
        return PlainTextResponse("".join(line + "\n" for line in lines))

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=methods)])


class FakeServer:
    """Runs a FakeKubernetes on 127.0.0.1 inside the test's event loop; restartable."""

    def __init__(self, fake: FakeKubernetes) -> None:
        self.fake = fake
        # Kept across restarts; free_port: a released bind(0) port may go to another server.
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(self.fake.app(), log_level="warning", lifespan="off", ws="none")
        self.server = uvicorn.Server(config)
        self.task = asyncio.get_running_loop().create_task(
            self.server.serve(sockets=[sock]), name="fake kubernetes api"
        )
        while not self.server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
        self.server = self.task = None
