"""The VIMs per cluster of a running SFEMC (ORCH-6); `flame.sfemc.build` assembles the rest.

Each cluster of the topology gets the VIM its `vim:` says:

* `process` (or unset), with an agent named for it (`vim_agents`, `--vim CLUSTER=URL`): a
  `RemoteVim` speaking to `flame serve vim` on the cluster's host; one per agent URL;
* `process`, no agent: this host's own `ProcessVim`, its SFEs listening on (and registered with)
  the cluster's topology address, 127.0.0.1 when it has none; the address must be this host's;
* `kubernetes`: a `KubernetesVim` with the credentials of the cluster's kubeconfig
  (`kubeconfigs`, `--kubeconfig CLUSTER=PATH`, or one for every such cluster), else lightkube's
  default (`KUBECONFIG`, `~/.kube/config`, in-cluster). A Kubernetes cluster without usable
  credentials gets no VIM: deployments onto it are refused, saying so.

Port ranges (`port_ranges`) are per process cluster of the whole topology, so a cluster keeps its
range whether this host or an agent runs it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError
from flame.sfemc.control import Sfemc
from flame.sfemc.images import ImageRepository
from flame.sfemc.registrar import Registrar
from flame.sfemc.vim.base import VimDriver
from flame.sfemc.vim.process import ProcessVim
from flame.sfemc.vim.remote import RemoteVim
from flame.topology.model import Topology, Vim

__all__ = ["Runtime", "build_vims", "port_ranges"]

log = logging.getLogger("flame.sfemc.runtime")

PORTS_PER_CLUSTER = 500


def port_ranges(topology: Topology, base: int) -> dict[str, range]:
    """Disjoint port ranges per process cluster, in cluster-id order."""
    clusters = sorted(c for c, n in topology.clusters.items() if n.vim in (None, Vim.PROCESS))
    top = base + PORTS_PER_CLUSTER * len(clusters)
    if base < 1024 or top > 65535:
        raise ConfigError(
            f"port base {base} gives ports up to {top}: pick a base from 1024 to "
            f"{65535 - PORTS_PER_CLUSTER * len(clusters)}"
        )
    return {
        c: range(base + i * PORTS_PER_CLUSTER, base + (i + 1) * PORTS_PER_CLUSTER)
        for i, c in enumerate(clusters)
    }


@dataclass
class Runtime:
    sfemc: Sfemc
    vims: Mapping[str, VimDriver]
    registrar: Registrar
    # Clusters left without a VIM, and why (a Kubernetes cluster without credentials).
    unserved: Mapping[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        for vim in {id(v): v for v in self.vims.values()}.values():
            await vim.close()
        await self.registrar.close()
        self.sfemc.store.close()


KubernetesFactory = Callable[[list[str], Path | None], VimDriver]


def _kubernetes_vim(clusters: list[str], kubeconfig: Path | None) -> VimDriver:
    from flame.sfemc.vim.kubernetes import KubernetesVim  # noqa: PLC0415 - lightkube is heavy

    config = None
    if kubeconfig is not None:
        from lightkube.config.kubeconfig import KubeConfig  # noqa: PLC0415
        from lightkube.core.exceptions import ConfigError as LightkubeConfigError  # noqa: PLC0415

        try:
            config = KubeConfig.from_file(kubeconfig)
        except (OSError, ValueError, LightkubeConfigError) as exc:
            raise ConfigError(
                f"cannot read the kubeconfig {kubeconfig} of cluster(s) {', '.join(clusters)}: "
                f"{exc}"
            ) from None
    return KubernetesVim(clusters, config=config)


def _check_local(address: str, cluster: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            raise ConfigError(
                f"cluster '{cluster}' has the address {address}, which is not an address of "
                f"this host ({exc.strerror}): run 'flame serve vim --cluster {cluster}' on its "
                f"host and pass --vim {cluster}=http://{address}:7090 to the orchestrator"
            ) from None


def build_vims(
    topology: Topology,
    *,
    state_dir: Path,
    images: ImageRepository,
    port_base: int = 20000,
    sr_urls: Mapping[str, str] | None = None,
    allow_unconfined_sfes: bool = False,
    vim_agents: Mapping[str, str] | None = None,
    vim_token: str | None = None,
    vim_verify: ssl.SSLContext | bool = True,
    kubeconfigs: Mapping[str | None, Path] | None = None,
    kubernetes_factory: KubernetesFactory = _kubernetes_vim,
    process_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, VimDriver], dict[str, str]]:
    """cluster -> its VIM driver, and cluster -> why it has none. See the module docstring.

    `kubeconfigs` maps a cluster to its kubeconfig; the key None gives one for all the others.
    """
    agents = dict(vim_agents or {})
    kubeconfigs = dict(kubeconfigs or {})
    for name in (*agents, *(k for k in kubeconfigs if k is not None)):
        if name not in topology.clusters:
            known = ", ".join(sorted(topology.clusters)) or "none"
            raise ConfigError(f"no cluster '{name}' in topology '{topology.name}' (known: {known})")
    for name in agents:
        if topology.clusters[name].vim is Vim.KUBERNETES:
            raise ConfigError(
                f"cluster '{name}' is a Kubernetes cluster (vim: kubernetes): give it "
                f"--kubeconfig {name}=PATH, not a VIM agent"
            )
    for name in (k for k in kubeconfigs if k is not None):
        if topology.clusters[name].vim is not Vim.KUBERNETES:
            raise ConfigError(
                f"cluster '{name}' is not a Kubernetes cluster: it needs no kubeconfig"
            )
    ranges = port_ranges(topology, port_base)
    vims: dict[str, VimDriver] = {}
    unserved: dict[str, str] = {}
    # Remote process VIMs: one driver per agent (an agent may serve several clusters).
    by_url: dict[str, list[str]] = {}
    for cluster, url in sorted(agents.items()):
        by_url.setdefault(url.rstrip("/"), []).append(cluster)
    for url, clusters in by_url.items():
        remote = RemoteVim(url, vim_token, clusters, repository=images, verify=vim_verify)
        vims.update(dict.fromkeys(clusters, remote))
    # This host's process VIM for the others.
    local = {c: r for c, r in ranges.items() if c not in agents}
    if local:
        hosts = {c: topology.clusters[c].address or "127.0.0.1" for c in local}
        for cluster, address in sorted(hosts.items()):
            _check_local(address, cluster)
        by_cluster = {
            cluster: (sr_urls or {})[node.sr]
            for cluster, node in topology.clusters.items()
            if cluster in local and node.sr is not None and node.sr in (sr_urls or {})
        }
        process = ProcessVim(
            state_dir / "vim",
            local,
            images,
            hosts=hosts,
            sr_urls=by_cluster,
            allow_unconfined=allow_unconfined_sfes,
            **dict(process_options or {}),
        )
        vims.update(dict.fromkeys(local, process))
    # Kubernetes clusters, grouped by the kubeconfig they use.
    by_config: dict[Path | None, list[str]] = {}
    for cluster, node in sorted(topology.clusters.items()):
        if node.vim is Vim.KUBERNETES:
            path = kubeconfigs.get(cluster, kubeconfigs.get(None))
            by_config.setdefault(path, []).append(cluster)
    for path, clusters in by_config.items():
        try:
            driver = kubernetes_factory(clusters, path)
            if getattr(driver, "kind", None) == "kubernetes" and hasattr(driver, "repository"):
                driver.repository = images  # FLAME images that name a container_image
            if getattr(driver, "kind", None) == "kubernetes" and hasattr(driver, "endpoint_certs"):
                driver.endpoint_certs = (process_options or {}).get("endpoint_certs")  # TLS SFEs
        except ConfigError as exc:
            if path is not None:
                raise  # a kubeconfig named and unusable is the operator's to fix now
            for cluster in clusters:
                unserved[cluster] = (
                    f"no Kubernetes credentials for cluster '{cluster}' ({exc.message}); "
                    f"pass --kubeconfig {cluster}=PATH to the orchestrator"
                )
            log.warning("%s", unserved[clusters[0]])
            continue
        vims.update(dict.fromkeys(clusters, driver))
    return vims, unserved
