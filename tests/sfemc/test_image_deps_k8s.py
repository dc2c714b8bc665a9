"""Issue 13 item 5, Kubernetes: an SF image's manifest may name the container image that a
Kubernetes cluster runs for it (`container_image`). Against the FAKE API server of
tests/sfemc/vim/fake_k8s.py (not Kubernetes; its objects are schema-validated)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User

from flame.common.diagnostics import ValidationFailed
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.runtime import build_vims
from flame.sfemc.vim import _k8s_manifests as m
from flame.sfemc.vim.base import EndpointSpec, VimError
from flame.sfemc.vim.kubernetes import KubernetesVim

from .test_runtime_vims import kubeconfig, topology
from .vim.fake_k8s import TOKEN, FakeKubernetes, FakeServer

pytestmark = pytest.mark.asyncio
CONTAINER = "registry.example/acme/depsf:1.0"


def sf(tmp: Path, name: str, extra: str = "") -> Path:
    src = tmp / name
    src.mkdir()
    (src / "flame-sf.yaml").write_text(
        f"name: {name}\nversion: '1.0'\nentrypoint: [python3, server.py]\n{extra}"
    )
    (src / "server.py").write_text("")
    return src


def spec(image: str, sfe: str = "i1.dep.c1") -> EndpointSpec:
    return EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="i1",
        sf="dep",
        cluster="c1",
        fqdn="dep.example",
        image=image,
    )


@pytest_asyncio.fixture
async def vim(tmp_path: Path) -> AsyncIterator[tuple[KubernetesVim, FakeKubernetes, Path]]:
    api = FakeKubernetes(ready_delay_s=0.1)
    server = FakeServer(api)
    await server.start()
    config = KubeConfig.from_one(cluster=Cluster(server=server.url), user=User(token=TOKEN))
    repo = ImageRepository(tmp_path / "images")
    driver = KubernetesVim(
        ["c1"],
        client=AsyncClient(config=config, trust_env=False),
        poll_s=0.05,
        repository=repo,
    )
    try:
        yield driver, api, tmp_path
    finally:
        await driver.close()
        await server.stop()


def image_of(api: FakeKubernetes, sfe: str) -> str:
    dep = api.objects[("deployments", "flame-c1", m.object_name(sfe))]
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


async def test_a_flame_image_runs_as_its_container_image(
    vim: tuple[KubernetesVim, FakeKubernetes, Path],
) -> None:
    driver, api, tmp = vim
    assert driver.repository is not None
    src = sf(tmp, "depsf", f"container_image: {CONTAINER}\n")
    info = driver.repository.put(build_image(src)[0], tags=["1.0"], owner="acme")
    assert info.manifest.container_image == CONTAINER
    await driver.place(spec("depsf:1.0"))
    assert image_of(api, "i1.dep.c1") == CONTAINER
    await driver.place(spec(info.digest, "i1.dep2.c1"))  # by digest too
    assert image_of(api, "i1.dep2.c1") == CONTAINER
    # A plain container reference is run as it is.
    await driver.place(spec("ghcr.io/example/echo:2", "i1.dep3.c1"))
    assert image_of(api, "i1.dep3.c1") == "ghcr.io/example/echo:2"


async def test_a_flame_image_without_one_is_refused(
    vim: tuple[KubernetesVim, FakeKubernetes, Path],
) -> None:
    driver, api, tmp = vim
    assert driver.repository is not None
    info = driver.repository.put(build_image(sf(tmp, "plain"))[0])
    with pytest.raises(VimError, match="names no container_image") as caught:
        await driver.place(spec(info.digest))
    assert caught.value.permanent
    assert not [k for k in api.objects if k[0] == "deployments"]


async def test_the_manifest_checks_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="not a container image reference"):
        build_image(sf(tmp_path, "bad", "container_image: 'has space:1'\n"))


async def test_the_orchestrator_gives_its_kubernetes_vim_the_repository(tmp_path: Path) -> None:
    """`build_vims` hands the image repository to the Kubernetes VIM it builds."""
    server = FakeServer(FakeKubernetes(ready_delay_s=0.1))
    await server.start()
    images = ImageRepository(tmp_path / "images")
    try:
        vims, _ = build_vims(
            topology(),
            state_dir=tmp_path,
            images=images,
            vim_agents={"edge": "https://192.0.2.10:7090"},
            kubeconfigs={None: kubeconfig(tmp_path / "all.yaml", server.url)},
        )
        k8s = vims["k8s-a"]
        assert isinstance(k8s, KubernetesVim)
        assert k8s.repository is images
        for driver in {id(v): v for v in vims.values()}.values():
            await driver.close()
    finally:
        await server.stop()
