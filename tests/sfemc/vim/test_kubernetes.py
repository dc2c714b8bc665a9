"""The Kubernetes VIM: (a) manifests against the Kubernetes OpenAPI schema, (b) the driver's
calls against a FAKE API server on loopback (tests/sfemc/vim/fake_k8s.py; not Kubernetes),
(c) a real cluster when KUBECONFIG is set."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Unpack

import httpx
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import pytest_asyncio
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User

from flame.common.errors import ConfigError
from flame.sfemc.vim import _k8s_manifests as m
from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec, VimError, VimState
from flame.sfemc.vim.kubernetes import KubernetesVim
from sfemc.helpers import SpecFields

from .fake_k8s import K8S_VERSION, TOKEN, FakeKubernetes, FakeServer


def k8s_spec(
    sfe: str = "i1.echo.c1",
    image: str = "ghcr.io/example/echo:1.0",
    cluster: str = "c1",
    sf: str = "echo",
    **kw: Unpack[SpecFields],
) -> EndpointSpec:
    base = EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="i1",
        sf=sf,
        cluster=cluster,
        fqdn="echo.example",
        image=image,
        ports=(PortSpec("http", 8080), PortSpec("metrics_port", 9100)),
        environment={"GREETING": "hi"},
        health=HealthSpec(path="/health", port="http", interval_s=0.5, timeout_s=1, retries=3),
        cpus=0.5,
        memory_bytes=256_000_000,
        disk_bytes=1_000_000_000,
    )
    return dataclasses.replace(base, **kw)


# -- (a) the manifests against the OpenAPI schema ------------------------------------------------

SPECS = {
    "full": k8s_spec(),
    "no ports, no limits": k8s_spec(
        ports=(), health=None, cpus=None, memory_bytes=None, disk_bytes=None
    ),
    "long and odd id": k8s_spec(
        sfe="Instance_1." + "x" * 80 + ".Cluster.EU-West", sf="Echo_SF", tenant="ACME Corp"
    ),
    "numeric port names": k8s_spec(ports=(PortSpec("8080", 8080),)),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_manifests_validate_against_the_kubernetes_schema(case: str) -> None:
    spec = SPECS[case]
    docs = [m.namespace(spec.cluster), m.deployment(spec, 1, "running")]
    if (svc := m.service(spec)) is not None:
        docs.append(svc)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    dep = docs[1]
    assert len(dep["metadata"]["name"]) <= 63
    assert dep["metadata"]["annotations"][m.ANNOTATION_SFE] == spec.sfe


def test_the_schema_check_catches_a_broken_manifest() -> None:
    dep = m.deployment(k8s_spec(), 1, "running")
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError, match="eighty"):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep = m.deployment(k8s_spec(), 1, "running")
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo: strict refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_manifest_content() -> None:
    spec = k8s_spec()
    dep = m.deployment(spec, 0, "placed")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["metadata"]["namespace"] == "flame-c1"
    assert dep["metadata"]["labels"]["flame/tenant"] == "acme"
    assert dep["metadata"]["labels"]["flame/sfe"] == "i1.echo.c1"
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert container["resources"]["limits"] == {
        "cpu": "500m",
        "memory": "256000000",
        "ephemeral-storage": "1000000000",
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FLAME_FQDN"] == "echo.example"
    assert env["GREETING"] == "hi"
    ports = m.service(spec)
    assert ports is not None
    assert [p["name"] for p in ports["spec"]["ports"]] == ["http", "metrics-port"]


# -- (b) the driver against the fake API server ----------------------------------------------


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[FakeKubernetes, FakeServer]]:
    api = FakeKubernetes(ready_delay_s=0.2)
    server = FakeServer(api)
    await server.start()
    yield api, server
    await server.stop()


def driver(server: FakeServer, **kw: Any) -> KubernetesVim:  # Any: forwarded as is
    config = KubeConfig.from_one(cluster=Cluster(server=server.url), user=User(token=TOKEN))
    client = AsyncClient(config=config, trust_env=False)
    return KubernetesVim(["c1", "c2"], client=client, poll_s=0.05, **kw)


@pytest.mark.asyncio
async def test_lifecycle_against_the_fake_api(fake: tuple[FakeKubernetes, FakeServer]) -> None:
    api, server = fake
    vim = driver(server, boot_timeout_s=5)
    try:
        placed = await vim.place(k8s_spec())
        assert placed.state is VimState.PLACED
        assert placed.ports == {"http": 8080, "metrics_port": 9100}
        assert "flame-c1" in api.namespaces
        name = m.object_name("i1.echo.c1")
        dep = api.objects[("deployments", "flame-c1", name)]
        assert dep["spec"]["replicas"] == 0
        assert ("services", "flame-c1", name) in api.objects
        applies = [r for r in api.requests if r[0] == "PATCH" and "apply-patch" in r[2]]
        assert len(applies) == 2  # server-side apply: idempotent by construction

        booted = await vim.boot("i1.echo.c1")
        assert booted.state is VimState.RUNNING
        assert booted.host == f"{name}.flame-c1.svc"
        assert (
            booted.limits
            == "kubernetes limits cpu=500m ephemeral-storage=1000000000 memory=256000000"
        )
        assert await vim.logs("i1.echo.c1", tail=3) == ["log line 27", "log line 28", "log line 29"]

        again = await vim.place(k8s_spec())  # re-placing a running SFE keeps it running
        assert again.state is VimState.RUNNING
        assert api.objects[("deployments", "flame-c1", name)]["spec"]["replicas"] == 1

        # A new controller with no memory finds everything from the API server.
        fresh = driver(server)
        listed = await fresh.list()
        assert [(s.sfe, s.state) for s in listed] == [("i1.echo.c1", VimState.RUNNING)]
        assert (await fresh.stop("i1.echo.c1")).state is VimState.STOPPED
        assert not [k for k in api.objects if k[0] == "pods"]
        await fresh.close()

        await vim.remove("i1.echo.c1")
        assert (await vim.status("i1.echo.c1")).state is VimState.ABSENT
        assert not api.objects
        await vim.remove("i1.echo.c1")  # idempotent
    finally:
        await vim.close()


@pytest.mark.asyncio
async def test_failures_are_clear(fake: tuple[FakeKubernetes, FakeServer]) -> None:
    api, server = fake
    vim = driver(server, boot_timeout_s=2)
    try:
        await vim.place(k8s_spec("i1.bad.c2", image="ghcr.io/example/fail:1", cluster="c2"))
        with pytest.raises(VimError, match="ErrImagePull: pull access denied") as info:
            await vim.boot("i1.bad.c2")
        assert (await vim.status("i1.bad.c2")).state is VimState.FAILED
        assert info.value.logs == ()
        await vim.remove("i1.bad.c2")

        with pytest.raises(VimError, match="not served by this Kubernetes VIM") as err:
            await vim.place(k8s_spec(cluster="elsewhere"))
        assert err.value.permanent
        with pytest.raises(VimError, match="container images, not FLAME image digests"):
            await vim.place(k8s_spec(image="sha256:" + "0" * 64))
        with pytest.raises(VimError, match="place it first"):
            await vim.boot("i1.never.c1")
        # A namespace deleted behind the driver's back is created again on the next place.
        api.namespaces.clear()
        assert (await vim.place(k8s_spec("i1.again.c1"))).state is VimState.PLACED
        assert "flame-c1" in api.namespaces
        await vim.remove("i1.again.c1")
    finally:
        await vim.close()
    down = driver(server)
    await server.stop()
    try:
        with pytest.raises(VimError, match="unreachable"):
            await down.status("i1.echo.c1")
    finally:
        await down.close()
        await server.start()  # the fixture stops it again


@pytest.mark.asyncio
async def test_the_fake_refuses_what_the_schema_refuses(
    fake: tuple[FakeKubernetes, FakeServer],
) -> None:
    """So every apply the driver got through in the tests above was a schema-valid object."""
    api, server = fake
    api.namespaces["flame-c1"] = m.namespace("c1")
    bad = m.deployment(k8s_spec(), 0, "placed")
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    url = f"{server.url}/apis/apps/v1/namespaces/flame-c1/deployments/{bad['metadata']['name']}"
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/apply-patch+yaml"}
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.patch(url, json=bad, headers=headers, params={"fieldManager": "t"})
        assert response.status_code == 422
        assert response.json()["reason"] == "Invalid"
        assert "eighty" in response.json()["message"]
        anonymous = await client.get(url)
        assert anonymous.status_code == 401
    assert not api.objects


# -- (c) a real cluster ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="KUBECONFIG is not set: no Kubernetes cluster to run against on this machine",
)
async def test_against_a_real_cluster() -> None:
    image = os.environ.get("FLAME_K8S_TEST_IMAGE", "nginxinc/nginx-unprivileged:alpine")
    vim = KubernetesVim(["flame-test"], boot_timeout_s=180)
    spec = k8s_spec(
        "it.echo.flame-test",
        image=image,
        cluster="flame-test",
        ports=(PortSpec("http", 8080),),
        health=HealthSpec(path="/"),
        disk_bytes=None,
    )
    try:
        await vim.place(spec)
        status = await vim.boot(spec.sfe)
        assert status.state is VimState.RUNNING
        assert await vim.logs(spec.sfe, tail=5) is not None
        assert (await vim.stop(spec.sfe)).state is VimState.STOPPED
    finally:
        await vim.remove(spec.sfe)
        await vim.close()


def test_no_kubernetes_configuration_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="Set KUBECONFIG to a kubeconfig file"):
        KubernetesVim(["c1"])
