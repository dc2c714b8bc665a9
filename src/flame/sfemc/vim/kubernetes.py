"""The Kubernetes VIM (distributed FLAME): each SFE is a Deployment plus a Service (SFEMC-5).

One namespace per FLAME cluster (``flame-<cluster>``). The Deployment carries what the SFEMC
asked for in the ``flame/desired`` annotation (placed and stopped are zero replicas, running is
one), so ``status`` and ``list`` are read back from the API server alone: a restarted
controller needs no local state. Objects are written with server-side apply, which makes every
call idempotent. SF images here are container image references, not repository digests.

Hop-by-hop TLS (docs/tls.md): a FLAME image whose manifest says `tls: true` gets, at every
boot, an endpoint certificate from the PCE for its Service's name (``<object>.<namespace>.svc``,
the host it is registered with), kept in a ``kubernetes.io/tls`` Secret owned by its
Deployment and mounted read-only (`flame.sfemc.vim._k8s_tls`). Renewed with a third of its
life left: the Secret is replaced and the pod template's certificate annotation changes, so
Kubernetes rolls the pod.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod, Secret, Service

from flame.common.errors import ConfigError
from flame.sfemc.images import ImageError, ImageRepository
from flame.sfemc.vim import _k8s_manifests as m
from flame.sfemc.vim._k8s_tls import CertRenewals, K8sCerts, renew_at, tls_state
from flame.sfemc.vim._records import spec_from_json
from flame.sfemc.vim.base import EndpointSpec, VimError, VimState, VimStatus
from flame.sfemc.vim.endpoint_tls import EndpointCertSource, EndpointCertsSetting

__all__ = ["KubernetesVim"]

FIELD_MANAGER = "flame-sfemc"
log = logging.getLogger(__name__)


class KubernetesVim(EndpointCertsSetting[K8sCerts]):
    """SFEs on a Kubernetes cluster through lightkube; `clusters` are FLAME cluster names."""

    kind = "kubernetes"

    def __init__(
        self,
        clusters: Sequence[str],
        *,
        client: AsyncClient | None = None,
        config: KubeConfig | None = None,
        boot_timeout_s: float = 120.0,
        poll_s: float = 0.5,
        repository: ImageRepository | None = None,
        endpoint_certs: EndpointCertSource | None = None,
    ) -> None:
        """`repository`: FLAME images whose manifest names a `container_image` run as that.
        `endpoint_certs`: where SFEs whose image says `tls: true` get their certificates
        (hop-by-hop TLS); None: they run plain and say so."""
        self.clusters = tuple(clusters)
        self.repository = repository
        if client is None:
            try:
                client = AsyncClient(config=config, field_manager=FIELD_MANAGER)
            except LightkubeConfigError as exc:
                raise ConfigError(
                    f"no usable Kubernetes configuration for the Kubernetes VIM: {exc}. Set "
                    "KUBECONFIG to a kubeconfig file, or run inside a cluster with a service account"
                ) from exc
        self.client = client
        self.boot_timeout_s = boot_timeout_s
        self.poll_s = poll_s
        self._where: dict[str, tuple[str, str]] = {}  # sfe -> (namespace, object name)
        self._namespaces: set[str] = set()
        self._certs = K8sCerts(endpoint_certs)
        self._renewals = CertRenewals(self._renew)

    # -- the VimDriver interface -------------------------------------------------------------

    async def place(self, spec: EndpointSpec) -> VimStatus:
        if spec.cluster not in self.clusters:
            raise VimError(
                spec.sfe,
                f"cluster {spec.cluster!r} is not served by this Kubernetes VIM "
                f"(it serves: {', '.join(self.clusters) or 'none'})",
                permanent=True,
            )
        spec, tls_wanted = await self._container_spec(spec)
        ns = m.namespace_name(spec.cluster)
        await self._ensure_namespace(spec.cluster)
        current = await self._deployment(spec.sfe, ns)
        desired = "placed"
        replicas = 0
        tls = None
        if current is not None:  # keep a running SFE running when its spec is re-applied
            desired = _annotation(current, m.ANNOTATION_DESIRED) or "placed"
            replicas = 1 if desired == "running" else 0
            tls = tls_state(current) if tls_wanted else None  # and its certificate mounted
        doc = m.deployment(spec, replicas, desired, tls_wanted=tls_wanted, tls=tls)
        await self._apply(spec.sfe, doc, spec.cluster)
        if (svc := m.service(spec)) is not None:
            await self._apply(spec.sfe, svc, spec.cluster)
        self._where[spec.sfe] = (ns, m.object_name(spec.sfe))
        return await self.status(spec.sfe)

    async def _container_spec(self, spec: EndpointSpec) -> tuple[EndpointSpec, bool]:
        """`spec` with the container image to run: a FLAME image (one the tenant may use) runs
        as its manifest's `container_image`; anything else is a container reference already.
        And whether the image opts in to hop-by-hop TLS (only FLAME images can say so)."""
        digest = None
        if self.repository is not None:
            with contextlib.suppress(ImageError):  # not one of ours (or not for this tenant)
                digest = await asyncio.to_thread(self.repository.resolve, spec.image, spec.tenant)
        if digest is None and not spec.image.startswith("sha256:"):
            return spec, False
        manifest = self.repository.get(digest).manifest if self.repository and digest else None
        if manifest is None or not manifest.container_image:
            why = (
                f"{spec.image!r} names no container_image in its manifest"
                if manifest is not None
                else "not FLAME image digests"
            )
            raise VimError(
                spec.sfe, f"the Kubernetes VIM runs container images, {why}", permanent=True
            )
        return dataclasses.replace(spec, image=manifest.container_image), manifest.tls

    async def boot(self, sfe: str) -> VimStatus:
        ns, name = await self._require(sfe)
        dep = await self._deployment(sfe, ns)
        if dep is not None and _annotation(dep, m.ANNOTATION_TLS_WANTED) == "true":
            if not _runs_with_a_current_certificate(dep):  # booting again changes nothing
                await self._with_certificate(sfe, dep)  # a fresh one at every start
        else:
            await self._scale(sfe, ns, name, 1, "running")
        deadline = time.monotonic() + self.boot_timeout_s
        while True:
            status = await self.status(sfe)
            if status.state is VimState.RUNNING:
                return status
            if status.state is VimState.FAILED or time.monotonic() >= deadline:
                lines = await self.logs(sfe, 20)
                why = status.reason or f"not ready after {self.boot_timeout_s:g}s"
                raise VimError(sfe, why, logs=lines)
            await asyncio.sleep(self.poll_s)

    async def stop(self, sfe: str) -> VimStatus:
        where = await self._find(sfe)
        if where is None:
            return VimStatus(sfe, VimState.ABSENT)
        await self._renewals.cancel(sfe)
        await self._scale(sfe, *where, 0, "stopped")
        return await self.status(sfe)

    async def remove(self, sfe: str) -> None:
        where = await self._find(sfe)
        if where is None:
            return
        ns, name = where
        await self._renewals.cancel(sfe)
        # The Secret is owned by the Deployment (garbage-collected with it); deleted here too
        # so that the key does not outlive the SFE until the collector's next pass.
        for kind, obj in ((Deployment, name), (Service, name), (Secret, m.secret_name(sfe))):
            try:
                await self.client.delete(kind, obj, namespace=ns)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise self._error(sfe, "delete", exc) from exc
        self._where.pop(sfe, None)

    async def status(self, sfe: str) -> VimStatus:
        where = await self._find(sfe)
        if where is None:
            return VimStatus(sfe, VimState.ABSENT)
        ns, name = where
        dep = await self._deployment(sfe, ns)
        if dep is None:
            return VimStatus(sfe, VimState.ABSENT)
        return await self._status_of(sfe, ns, name, dep)

    async def list(self) -> builtins.list[VimStatus]:
        result: builtins.list[VimStatus] = []
        for cluster in self.clusters:
            ns = m.namespace_name(cluster)
            try:
                async for dep in self.client.list(
                    Deployment, namespace=ns, labels={m.MANAGED_BY: "flame"}
                ):
                    name = _name(dep)
                    sfe = _annotation(dep, m.ANNOTATION_SFE) or name
                    self._where[sfe] = (ns, name)
                    result.append(await self._status_of(sfe, ns, name, dep))
            except ApiError as exc:
                if exc.status.code != 404:
                    raise self._error(ns, "list", exc) from exc
        return sorted(result, key=lambda s: s.sfe)

    async def logs(self, sfe: str, tail: int = 100) -> builtins.list[str]:
        where = await self._find(sfe)
        if where is None:
            return []
        ns, _ = where
        pods = await self._pods(sfe, ns)
        if not pods:
            return []
        newest = max(pods, key=lambda p: str(p.metadata.creationTimestamp if p.metadata else ""))
        lines: builtins.list[str] = []
        try:
            async for line in self.client.log(
                _name(newest), namespace=ns, tail_lines=tail, newlines=False
            ):
                lines.append(line)
        except ApiError as exc:
            if exc.status.code in (400, 404):  # not started yet, or gone
                return []
            raise self._error(sfe, "read the logs of", exc) from exc
        return lines[-tail:] if tail > 0 else []

    async def close(self) -> None:
        await self._renewals.close()
        await self._certs.close()
        await self.client.close()

    # -- hop-by-hop TLS ---------------------------------------------------------------------

    async def _with_certificate(self, sfe: str, dep: Deployment) -> dict[str, Any]:
        """Run `sfe` (one replica) with a fresh endpoint certificate in its Secret, or plain
        when the PCE's switch is off; VimError (temporary) when none can be had now."""
        ns, name = _namespace(dep), _name(dep)
        spec = spec_from_json(json.loads(_annotation(dep, m.ANNOTATION_ENDPOINT) or "{}"))
        uid = str(dep.metadata.uid) if dep.metadata and dep.metadata.uid else ""
        tls, secret = await self._certs.issue(spec, f"{name}.{ns}.svc", uid)
        if secret is not None:
            await self._apply_secret(sfe, secret)
        else:
            await self._delete_secret(sfe, ns)  # never an older certificate left mounted
        doc = m.deployment(spec, 1, "running", tls_wanted=True, tls=tls)
        await self._apply(sfe, doc, spec.cluster)
        return tls

    async def _renew(self, sfe: str) -> dict[str, Any] | None:
        """A new certificate for a running TLS SFE: the Secret replaced, the pod rolled."""
        ns, _ = await self._require(sfe)
        dep = await self._deployment(sfe, ns)
        if dep is None or _annotation(dep, m.ANNOTATION_DESIRED) != "running":
            return None
        log.info("%s: renewing its endpoint certificate (the pod is rolled)", sfe)
        return await self._with_certificate(sfe, dep)

    async def _apply_secret(self, sfe: str, doc: dict[str, Any]) -> None:
        """Like `_apply`, but a refusal never echoes the server's message (it may quote the
        object, and this one holds a private key)."""
        try:
            await self.client.apply(from_dict(doc), field_manager=FIELD_MANAGER, force=True)
        except ApiError as exc:
            code = exc.status.code or 0
            raise VimError(
                sfe,
                f"Kubernetes refused to store the endpoint certificate Secret ({code})",
                permanent=400 <= code < 500 and code not in (409, 429),
            ) from None
        except httpx2.HTTPError as exc:
            raise VimError(sfe, f"the Kubernetes API server is unreachable: {exc}") from None

    async def _delete_secret(self, sfe: str, ns: str) -> None:
        try:
            await self.client.delete(Secret, m.secret_name(sfe), namespace=ns)
        except ApiError as exc:
            if exc.status.code != 404:
                raise self._error(sfe, "delete the certificate Secret of", exc) from exc

    # -- helpers ---------------------------------------------------------------------------

    async def _ensure_namespace(self, cluster: str) -> None:
        ns = m.namespace_name(cluster)
        if ns in self._namespaces:
            return
        try:
            await self.client.get(Namespace, ns)
        except ApiError as exc:
            if exc.status.code != 404:
                raise self._error(ns, "read the namespace", exc) from exc
            with contextlib.suppress(ApiError):  # 409: created meanwhile by another controller
                await self.client.create(from_dict(m.namespace(cluster)))
        self._namespaces.add(ns)

    async def _apply(self, sfe: str, doc: dict[str, Any], cluster: str | None = None) -> None:
        try:
            await self.client.apply(from_dict(doc), field_manager=FIELD_MANAGER, force=True)
        except ApiError as exc:
            if exc.status.code == 404 and cluster is not None:
                # The namespace went away behind our back: create it again, once.
                self._namespaces.discard(m.namespace_name(cluster))
                await self._ensure_namespace(cluster)
                await self._apply(sfe, doc)
                return
            raise self._error(sfe, f"apply the {doc['kind']} of", exc) from exc
        except httpx2.HTTPError as exc:
            raise VimError(sfe, f"the Kubernetes API server is unreachable: {exc}") from exc

    async def _scale(self, sfe: str, ns: str, name: str, replicas: int, desired: str) -> None:
        patch = {
            "metadata": {"annotations": {m.ANNOTATION_DESIRED: desired}},
            "spec": {"replicas": replicas},
        }
        try:
            await self.client.patch(Deployment, name, patch, namespace=ns)
        except ApiError as exc:
            raise self._error(sfe, "scale", exc) from exc

    async def _deployment(self, sfe: str, ns: str) -> Deployment | None:
        try:
            dep: Deployment = await self.client.get(Deployment, m.object_name(sfe), namespace=ns)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise self._error(sfe, "read", exc) from exc
        except httpx2.HTTPError as exc:
            raise VimError(sfe, f"the Kubernetes API server is unreachable: {exc}") from exc
        return dep

    async def _pods(self, sfe: str, ns: str) -> builtins.list[Pod]:
        selector: dict[str, Any] = {m.LABEL_SFE: m.label_value(sfe), m.MANAGED_BY: "flame"}
        return [p async for p in self.client.list(Pod, namespace=ns, labels=selector)]

    async def _find(self, sfe: str) -> tuple[str, str] | None:
        """Where `sfe` lives: remembered, or looked up in each cluster's namespace."""
        if sfe in self._where:
            return self._where[sfe]
        name = m.object_name(sfe)
        for cluster in self.clusters:
            ns = m.namespace_name(cluster)
            if await self._deployment(sfe, ns) is not None:
                self._where[sfe] = (ns, name)
                return ns, name
        return None

    async def _require(self, sfe: str) -> tuple[str, str]:
        where = await self._find(sfe)
        if where is None:
            raise VimError(sfe, "not placed on this Kubernetes VIM: place it first", permanent=True)
        return where

    async def _status_of(self, sfe: str, ns: str, name: str, dep: Deployment) -> VimStatus:
        desired = _annotation(dep, m.ANNOTATION_DESIRED) or "placed"
        status = dep.status
        ready = (status.readyReplicas or 0) if status else 0
        ports = _ports(dep)
        limits = _limits(dep)
        host = f"{name}.{ns}.svc"
        if desired != "running":
            state = VimState.STOPPED if desired == "stopped" else VimState.PLACED
            return VimStatus(sfe, state, ports=ports, limits=limits)
        pods = await self._pods(sfe, ns)
        restarts, reason = _pod_health(pods)
        failed = _deployment_failure(dep)
        tls = tls_state(dep)
        if ready >= 1:
            state = VimState.RUNNING
            self._renewals.watch(sfe, tls)  # also one adopted after a controller restart
        elif failed or (reason and _is_fatal(reason)):
            state = VimState.FAILED
        else:
            state = VimState.STARTING
        return VimStatus(
            sfe,
            state,
            host=host if state is VimState.RUNNING else None,
            ports=ports,
            restarts=restarts,
            reason=failed or reason,
            limits=limits,
            tls=state is VimState.RUNNING and bool(tls and tls.get("on")),
        )

    @staticmethod
    def _error(what: str, action: str, exc: ApiError) -> VimError:
        code = exc.status.code or 0
        message = exc.status.message or str(exc)
        # 4xx other than conflicts and throttling will not pass on a retry: the request is wrong.
        permanent = 400 <= code < 500 and code not in (409, 429)
        return VimError(
            what, f"Kubernetes refused to {action} it ({code}): {message}", permanent=permanent
        )


_FATAL_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
)


def _is_fatal(reason: str) -> bool:
    return any(word in reason for word in _FATAL_WAITING)


def _runs_with_a_current_certificate(dep: Deployment) -> bool:
    tls = tls_state(dep)
    return (
        _annotation(dep, m.ANNOTATION_DESIRED) == "running"
        and tls is not None
        and bool(tls.get("on"))
        and time.time() < renew_at(tls)
    )


def _namespace(obj: Any) -> str:
    return str(obj.metadata.namespace) if obj.metadata else ""


def _name(obj: Any) -> str:
    return str(obj.metadata.name) if obj.metadata else ""


def _annotation(obj: Any, key: str) -> str | None:
    annotations = obj.metadata.annotations if obj.metadata else None
    return None if not annotations else annotations.get(key)


def _ports(dep: Deployment) -> dict[str, int]:
    raw = _annotation(dep, m.ANNOTATION_SPEC)
    if not raw:
        return {}
    return {str(k): int(v) for k, v in json.loads(raw).get("ports", {}).items()}


def _limits(dep: Deployment) -> str | None:
    if dep.spec is None or dep.spec.template.spec is None:
        return None
    res = dep.spec.template.spec.containers[0].resources
    if res is None or not res.limits:
        return "none requested"
    return "kubernetes limits " + " ".join(f"{k}={v}" for k, v in sorted(res.limits.items()))


def _pod_health(pods: Sequence[Pod]) -> tuple[int, str | None]:
    restarts = 0
    reason: str | None = None
    for pod in pods:
        for cs in (pod.status.containerStatuses if pod.status else None) or ():
            restarts += cs.restartCount or 0
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason:
                reason = f"container {waiting.reason}: {waiting.message or ''}".rstrip(": ")
            terminated = cs.lastState.terminated if cs.lastState else None
            if reason is None and terminated is not None:
                reason = f"last exit {terminated.exitCode} ({terminated.reason or 'unknown'})"
    return restarts, reason


def _deployment_failure(dep: Deployment) -> str | None:
    for cond in (dep.status.conditions if dep.status else None) or ():
        if cond.type == "ReplicaFailure" and cond.status == "True":
            return f"ReplicaFailure: {cond.message or cond.reason}"
        if cond.type == "Progressing" and cond.status == "False":
            return f"not progressing: {cond.message or cond.reason}"
    return None
