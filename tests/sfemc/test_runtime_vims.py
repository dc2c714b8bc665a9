"""Issue 13: each cluster gets the VIM its topology entry says, with its address and credentials.

* a process cluster with no agent runs on this host, its SFEs on the cluster's address;
* a process cluster with an agent (`--vim CLUSTER=URL`) gets a `RemoteVim`;
* a `vim: kubernetes` cluster gets a `KubernetesVim` with the credentials of its kubeconfig
  (`--kubeconfig CLUSTER=PATH`), driven here against the FAKE API server of
  tests/sfemc/vim/fake_k8s.py (there is no Kubernetes cluster on these machines), or none, with
  the reason, when it has no credentials at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from flame.cli.orchestrator_commands import _kubeconfigs
from flame.common.diagnostics import DiagnosticSink
from flame.common.errors import ConfigError, UserError
from flame.common.tls import ClearTextToken
from flame.sfemc.build import SfemcSettings, build_sfemc
from flame.sfemc.events import InProcessBus
from flame.sfemc.images import ImageRepository
from flame.sfemc.runtime import build_vims
from flame.sfemc.vim.base import EndpointSpec, PortSpec, VimState
from flame.sfemc.vim.kubernetes import KubernetesVim
from flame.sfemc.vim.process import ProcessVim
from flame.sfemc.vim.remote import RemoteVim
from flame.topology.loader import parse_topology
from flame.topology.model import Topology

from .vim.fake_k8s import TOKEN, FakeKubernetes, FakeServer

TOPOLOGY = """\
flame_topology: 1
name: mixed
service_routers:
  sr-1: {address: 127.0.0.1}
clusters:
  here: {sr: sr-1, address: 127.0.4.4, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  plain: {sr: sr-1, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  edge: {sr: sr-1, address: 192.0.2.10, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  k8s-a: {sr: sr-1, vim: kubernetes, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  k8s-b: {sr: sr-1, vim: kubernetes, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
"""


def topology(text: str = TOPOLOGY) -> Topology:
    sink = DiagnosticSink()
    topo = parse_topology(text, "mixed.yaml", sink)
    assert topo is not None, sink.items
    assert not sink.has_errors(), sink.items
    return topo


def kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        f"""\
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{server}"}}}}]
users: [{{name: flame, user: {{token: {token}}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: flame}}}}]
current-context: fake
"""
    )
    return path


@pytest.fixture
def no_default_kubernetes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KUBECONFIG, no ~/.kube/config: lightkube finds no credentials of its own."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer(FakeKubernetes(ready_delay_s=0.1))
    await server.start()
    yield server
    await server.stop()


@pytest.mark.usefixtures("no_default_kubernetes")
@pytest.mark.asyncio
async def test_each_cluster_gets_the_vim_its_topology_says(
    tmp_path: Path, fake: FakeServer
) -> None:
    images = ImageRepository(tmp_path / "images")
    vims, unserved = build_vims(
        topology(),
        state_dir=tmp_path,
        images=images,
        vim_agents={"edge": "https://192.0.2.10:7090/"},
        vim_token="flm_x",
        kubeconfigs={"k8s-a": kubeconfig(tmp_path / "a.yaml", fake.url)},
    )
    try:
        local = vims["here"]
        assert isinstance(local, ProcessVim)
        assert vims["plain"] is local
        assert local.hosts == {"here": "127.0.4.4", "plain": "127.0.0.1"}
        assert set(local.ports.ranges) == {"here", "plain"}
        remote = vims["edge"]
        assert isinstance(remote, RemoteVim)
        assert remote.url == "https://192.0.2.10:7090"
        # A token never goes to another host in clear.
        with pytest.raises(ClearTextToken, match="the VIM agent"):
            build_vims(
                topology(),
                state_dir=tmp_path,
                images=images,
                vim_agents={"edge": "http://192.0.2.10:7090"},
                vim_token="flm_x",
            )
        assert remote.clusters == ("edge",)
        assert remote.repository is images  # names resolve to the digests admitted here
        k8s = vims["k8s-a"]
        assert isinstance(k8s, KubernetesVim)
        assert k8s.clusters == ("k8s-a",)
        # k8s-b has no kubeconfig, and there is no default: no VIM, and the reason says so.
        assert "k8s-b" not in vims
        assert "--kubeconfig k8s-b=PATH" in unserved["k8s-b"]
        # The Kubernetes VIM built from the kubeconfig drives the (fake) API server.
        spec = EndpointSpec(
            sfe="i1.echo.k8s-a",
            tenant="acme",
            sfc="svc",
            sfci="i1",
            sf="echo",
            cluster="k8s-a",
            fqdn="echo.example",
            image="ghcr.io/example/echo:1.0",
            ports=(PortSpec("http", 8080),),
        )
        assert (await k8s.place(spec)).state is VimState.PLACED
        running = await k8s.boot("i1.echo.k8s-a")
        assert running.state is VimState.RUNNING
        assert running.host is not None
        assert running.host.endswith(".flame-k8s-a.svc")  # the Service's cluster DNS name
        await k8s.remove("i1.echo.k8s-a")
        assert await k8s.list() == []
    finally:
        for vim in {id(v): v for v in vims.values()}.values():
            await vim.close()


@pytest.mark.usefixtures("no_default_kubernetes")
@pytest.mark.asyncio
async def test_one_kubeconfig_for_every_kubernetes_cluster(
    tmp_path: Path, fake: FakeServer
) -> None:
    vims, unserved = build_vims(
        topology(),
        state_dir=tmp_path,
        images=ImageRepository(tmp_path / "images"),
        vim_agents={"edge": "https://192.0.2.10:7090"},
        kubeconfigs={None: kubeconfig(tmp_path / "all.yaml", fake.url)},
    )
    try:
        assert unserved == {}
        assert vims["k8s-a"] is vims["k8s-b"]
        assert vims["k8s-a"].clusters == ("k8s-a", "k8s-b")  # type: ignore[attr-defined]
    finally:
        for vim in {id(v): v for v in vims.values()}.values():
            await vim.close()


@pytest.mark.usefixtures("no_default_kubernetes")
def test_configuration_mistakes_are_refused_with_the_fix(tmp_path: Path) -> None:
    images = ImageRepository(tmp_path / "images")

    def build(**kw: object) -> None:
        vims, _ = build_vims(topology(), state_dir=tmp_path, images=images, **kw)  # type: ignore[arg-type]
        for vim in {id(v): v for v in vims.values()}.values():
            asyncio.run(vim.close())

    # A cluster on another host with no agent named: this host cannot listen there.
    with pytest.raises(ConfigError, match=r"not an address of this host.*--vim edge=http://"):
        build()
    with pytest.raises(ConfigError, match="no cluster 'nope'"):
        build(vim_agents={"edge": "http://x", "nope": "http://y"})
    with pytest.raises(ConfigError, match=r"Kubernetes cluster .* not a VIM agent"):
        build(vim_agents={"edge": "http://x", "k8s-a": "http://y"})
    with pytest.raises(ConfigError, match="not a Kubernetes cluster"):
        build(vim_agents={"edge": "http://x"}, kubeconfigs={"here": tmp_path / "k.yaml"})
    with pytest.raises(ConfigError, match="cannot read the kubeconfig"):
        build(vim_agents={"edge": "http://x"}, kubeconfigs={"k8s-a": tmp_path / "missing.yaml"})


@pytest.mark.usefixtures("no_default_kubernetes")
def test_a_deployment_onto_a_cluster_without_credentials_says_why(tmp_path: Path) -> None:
    runtime = build_sfemc(
        SfemcSettings(state_dir=tmp_path, vim_agents={"edge": "https://192.0.2.10:7090"}),
        topology(),
        InProcessBus(),
    )
    try:
        assert set(runtime.vims) == {"here", "plain", "edge"}
        assert set(runtime.unserved) == {"k8s-a", "k8s-b"}
    finally:
        asyncio.run(runtime.close())


def test_kubeconfig_options(tmp_path: Path) -> None:
    assert _kubeconfigs(("a=/k/a.yaml", "/k/all.yaml")) == {
        "a": Path("/k/a.yaml"),
        None: Path("/k/all.yaml"),
    }
    with pytest.raises(UserError, match="twice"):
        _kubeconfigs(("a=/x", "a=/y"))
    with pytest.raises(UserError, match=r"\[CLUSTER=\]PATH"):
        _kubeconfigs(("a=",))
