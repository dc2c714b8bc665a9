"""Hop-by-hop TLS on the Kubernetes VIM (SFR-19, issue 15 item 3; docs/tls.md): an SFE whose
FLAME image says `tls: true` gets an endpoint certificate of a real platform CA in a
``kubernetes.io/tls`` Secret owned by its Deployment, mounted read-only and named in
FLAME_TLS_*; renewed (Secret replaced, pod rolled) with a third of its life left; plain when the
PCE's switch is off; a temporary boot failure when no certificate can be had. Against the FAKE
API server of tests/sfemc/vim/fake_k8s.py (not Kubernetes; its objects are schema-validated):
nothing here mounts the Secret into a real container."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import pytest_asyncio
from cryptography import x509
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User

from eventually import eventually_async
from flame.common.pki import PlatformCA, fingerprint_of
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim import _k8s_manifests as m
from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec, VimError, VimState
from flame.sfemc.vim.endpoint_tls import CertUnavailable, EndpointCert, HopTlsOff
from flame.sfemc.vim.kubernetes import KubernetesVim

from .fake_k8s import K8S_VERSION, TOKEN, FakeKubernetes, FakeServer

NS = "flame-c1"
SFE = "i1.tlsecho.c1"
HOST = f"{m.object_name(SFE)}.{NS}.svc"


class DnsCaSource:
    """Endpoint certificates of a real platform CA for DNS names (the Service's name);
    `off`/`away` play the PCE's 409 `hop_tls_off` and an unreachable PCE."""

    def __init__(self, ca: PlatformCA, days: float) -> None:
        self.ca, self.days = ca, days
        self.off = self.away = False
        self.issued: list[EndpointCert] = []

    async def issue(self, host: str) -> EndpointCert:
        if self.off:
            raise HopTlsOff("hop TLS is off at this PCE")
        if self.away:
            raise CertUnavailable("no endpoint certificate from the PCE (connection refused)")
        got = self.ca.issue([host], days=self.days)
        cert = EndpointCert(
            host, got.chain_pem, got.key_pem, self.ca.cert_pem, got.not_after,
            fingerprint_of(got.chain_pem),
        )  # fmt: skip
        self.issued.append(cert)
        return cert

    async def close(self) -> None:
        return None


@pytest_asyncio.fixture
async def k8s(tmp_path: Path) -> AsyncIterator[tuple[KubernetesVim, FakeKubernetes, DnsCaSource]]:
    api = FakeKubernetes(ready_delay_s=0.05)
    server = FakeServer(api)
    await server.start()
    config = KubeConfig.from_one(cluster=Cluster(server=server.url), user=User(token=TOKEN))
    source = DnsCaSource(PlatformCA.open(tmp_path / "ca"), days=30)
    driver = KubernetesVim(
        ["c1"],
        client=AsyncClient(config=config, trust_env=False),
        poll_s=0.05,
        repository=ImageRepository(tmp_path / "images"),
        endpoint_certs=source,
    )
    try:
        yield driver, api, source
    finally:
        await driver.close()
        await server.stop()


def tls_image(driver: KubernetesVim, tmp: Path, tls: bool = True) -> str:
    src = tmp / ("tlsecho" if tls else "plainecho")
    src.mkdir()
    (src / "server.py").write_text("")
    (src / "flame-sf.yaml").write_text(
        f"name: {src.name}\nversion: '1.0'\nentrypoint: [python3, server.py]\n"
        f"container_image: registry.example/acme/echo:1\ntls: {str(tls).lower()}\n"
    )
    assert driver.repository is not None
    return driver.repository.put(build_image(src)[0], owner="acme").digest


def tls_spec(image: str, sfe: str = SFE) -> EndpointSpec:
    return EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="i1",
        sf="tlsecho",
        cluster="c1",
        fqdn="echo.example",
        image=image,
        ports=(PortSpec("http", 8080),),
        environment={"FLAME_TLS_KEY": "/planted/by/the/template"},
        health=HealthSpec(path="/health", port="http"),
    )


def objects(api: FakeKubernetes, sfe: str = SFE) -> tuple[dict[str, Any], dict[str, Any] | None]:
    dep = api.objects[("deployments", NS, m.object_name(sfe))]
    return dep, api.objects.get(("secrets", NS, m.secret_name(sfe)))


def pod_names(api: FakeKubernetes) -> set[str]:
    return {k[2] for k in api.objects if k[0] == "pods"}


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_sfr19_tls_manifests_validate_against_the_kubernetes_schema() -> None:
    spec = tls_spec("registry.example/acme/echo:1")
    cert = EndpointCert(HOST, "CHAIN", "SECRET-KEY-BYTES", "CA", 0.0, "ab" * 32)
    secret = m.tls_secret(spec, cert, "0b7c1f4e-0000-4000-8000-000000000001")
    tls = {"on": True, "issued_at": 1.0, "not_after": 2.0, "fingerprint_sha256": "ab" * 32}
    dep = m.deployment(spec, 1, "running", tls_wanted=True, tls=tls)
    for doc in (secret, dep):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FLAME_TLS_KEY"] == f"{m.TLS_MOUNT}/tls.key"  # never the template's own
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert "SECRET-KEY-BYTES" not in json.dumps(dep)  # the key is in the Secret only


@pytest.mark.asyncio
async def test_sfr19_kubernetes_sfe_gets_a_certificate_secret_and_is_registered_tls(
    k8s: tuple[KubernetesVim, FakeKubernetes, DnsCaSource],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, api, source = k8s
    caplog.set_level(logging.DEBUG)
    await driver.place(tls_spec(tls_image(driver, tmp_path)))
    _, secret = objects(api)
    assert secret is None
    assert not source.issued
    status = await driver.boot(SFE)
    assert status.state is VimState.RUNNING
    assert status.tls
    assert status.host == HOST
    dep, secret = objects(api)
    assert secret is not None
    cert = source.issued[-1]
    # The Secret: kubernetes.io/tls plus ca.crt, owned by the Deployment (its uid).
    assert secret["type"] == "kubernetes.io/tls"
    assert secret_text(secret, "tls.crt") == cert.chain
    assert secret_text(secret, "tls.key") == cert.key
    assert secret_text(secret, "ca.crt") == cert.ca
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Deployment", dep["metadata"]["uid"])
    # The certificate names the Service's DNS name: what the SR connects to.
    names = x509.load_pem_x509_certificate(cert.chain.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert HOST in names.value.get_values_for_type(x509.DNSName)
    # Mounted read-only and named in the environment; the template's FLAME_TLS_* dropped.
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["volumeMounts"] == [
        {"name": m.TLS_VOLUME, "mountPath": m.TLS_MOUNT, "readOnly": True}
    ]
    assert pod["volumes"][0]["secret"]["secretName"] == m.secret_name(SFE)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FLAME_TLS_CERT"] == f"{m.TLS_MOUNT}/tls.crt"
    assert env["FLAME_TLS_KEY"] == f"{m.TLS_MOUNT}/tls.key"
    assert env["FLAME_TLS_CA"] == f"{m.TLS_MOUNT}/ca.crt"
    # The key never leaves the Secret: not in the Deployment, the status, the logs.
    key_line = cert.key.splitlines()[1]
    assert key_line not in json.dumps(dep)
    assert key_line not in repr(status)
    assert key_line not in caplog.text
    assert json.loads(dep["metadata"]["annotations"][m.ANNOTATION_TLS])["on"] is True
    # Booting it again while it runs changes nothing: no new certificate, no rolled pod.
    pods = pod_names(api)
    assert (await driver.boot(SFE)).tls
    assert len(source.issued) == 1
    assert pod_names(api) == pods
    # Placing again (the reconciler's resync) keeps it running with its certificate.
    await driver.place(tls_spec(tls_image_digest(driver)))
    assert (await driver.status(SFE)).tls
    assert objects(api)[0]["spec"]["template"]["spec"]["volumes"] == pod["volumes"]
    # Removing the SFE removes the Secret (and the key) with it.
    await driver.remove(SFE)
    assert not [k for k in api.objects if k[0] == "secrets"]


def tls_image_digest(driver: KubernetesVim) -> str:
    assert driver.repository is not None
    return next(i.digest for i in driver.repository.list() if i.manifest.tls)


@pytest.mark.asyncio
async def test_sfr19_kubernetes_certificate_renewed_with_a_third_of_its_life_left(
    k8s: tuple[KubernetesVim, FakeKubernetes, DnsCaSource], tmp_path: Path
) -> None:
    """A 6 s certificate: due after ~4 s; the Secret holds a new one and the pod is rolled."""
    driver, api, source = k8s
    source.days = 6 / 86400
    await driver.place(tls_spec(tls_image(driver, tmp_path)))
    await driver.boot(SFE)
    first_pods = pod_names(api)
    first = source.issued[-1].fingerprint

    def renewed() -> bool:  # the Secret first, then the Deployment: wait for both
        dep, secret = objects(api)
        now = dep["spec"]["template"]["metadata"]["annotations"][m.ANNOTATION_CERT]
        return (
            secret is not None
            and now != first
            and now == secret["metadata"]["annotations"][m.ANNOTATION_CERT]
        )

    await eventually_async(renewed, timeout=30, what="the certificate renewed")
    dep, secret = objects(api)
    assert secret is not None
    assert fingerprint_of(secret_text(secret, "tls.crt")) != first
    template = dep["spec"]["template"]["metadata"]["annotations"]
    assert template[m.ANNOTATION_CERT] == secret["metadata"]["annotations"][m.ANNOTATION_CERT]
    assert pod_names(api).isdisjoint(first_pods)  # the pod rolled onto the new certificate

    async def ready_again() -> bool:  # the fake rolls all at once: the new pod gets ready
        status = await driver.status(SFE)
        return status.state is VimState.RUNNING and status.tls and status.restarts == 0

    await eventually_async(ready_again, timeout=30, what="the rolled pod ready with TLS")


@pytest.mark.asyncio
async def test_sfr19_kubernetes_switch_off_runs_plain_and_no_certificate_is_temporary(
    k8s: tuple[KubernetesVim, FakeKubernetes, DnsCaSource], tmp_path: Path
) -> None:
    driver, api, source = k8s
    await driver.place(tls_spec(tls_image(driver, tmp_path)))
    source.away = True
    with pytest.raises(VimError, match="hop-by-hop TLS") as caught:
        await driver.boot(SFE)
    assert not caught.value.permanent  # retried by the reconciler, never plain meanwhile
    dep, secret = objects(api)
    assert dep["spec"]["replicas"] == 0
    assert secret is None
    source.away, source.off = False, True
    status = await driver.boot(SFE)
    assert status.state is VimState.RUNNING
    assert not status.tls
    dep, secret = objects(api)
    assert secret is None
    assert "volumes" not in dep["spec"]["template"]["spec"]
    tls = json.loads(dep["metadata"]["annotations"][m.ANNOTATION_TLS])
    assert tls["on"] is False
    assert "the PCE says" in tls["note"]


@pytest.mark.asyncio
async def test_sfr19_a_plain_image_gets_no_certificate(
    k8s: tuple[KubernetesVim, FakeKubernetes, DnsCaSource], tmp_path: Path
) -> None:
    driver, api, source = k8s
    await driver.place(tls_spec(tls_image(driver, tmp_path, tls=False)))
    status = await driver.boot(SFE)
    assert status.state is VimState.RUNNING
    assert not status.tls
    assert not source.issued
    assert objects(api)[1] is None
