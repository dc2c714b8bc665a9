"""Where the SFEMC is built (issue 18): typed settings in, a running assembly out.

* `build_sfemc(SfemcSettings, topology, bus)`: the SFEMC of `flame serve orchestrator` (store,
  registrar, image repository, a VIM per cluster: `runtime.build_vims`), as a `Runtime`;
  tests give their own VIMs and registrar (`SfemcParts`) and get the same assembly.
* `build_vim_agent(VimAgentSettings)`: the VIM agent of `flame serve vim` (a cluster's process
  VIM on its own host, its API, and its resource metrics to the CLMC).

The CLI parses options into these settings and runs what comes back; nothing here reads
options, the config file or the environment.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.auth import TokenStore
from flame.common.tls import require_private_url
from flame.sfemc.agent import ImageSource, build_agent_vim, create_agent_app
from flame.sfemc.control import ImageResolver, Sfemc
from flame.sfemc.events import EventBus
from flame.sfemc.images import ImageRepository
from flame.sfemc.registrar import HttpRegistrar, InProcessRegistrar, Registrar
from flame.sfemc.runtime import Runtime, build_vims
from flame.sfemc.store import open_store
from flame.sfemc.vim.base import VimDriver
from flame.sfemc.vim.endpoint_tls import PceEndpointCerts
from flame.sfemc.vim.metrics_reporter import for_process_vim
from flame.sfemc.vim.process import ProcessVim
from flame.topology.loader import load_topology
from flame.topology.model import Topology

__all__ = [
    "SfemcParts",
    "SfemcSettings",
    "VimAgent",
    "VimAgentSettings",
    "build_sfemc",
    "build_vim_agent",
    "no_tokens_warning",
]

Warn = Callable[[str], None]


@dataclass(frozen=True)
class SfemcSettings:
    """What the SFEMC is built from. `db` and `images_dir` default to files under `state_dir`."""

    state_dir: Path
    db: str | None = None  # a SQLite path or postgresql://...
    images_dir: Path | None = None
    # Register endpoints at these PCEs (active first); none: an in-process registry, which no
    # service router reads (said by `flame serve orchestrator` when it starts).
    pce_urls: tuple[str, ...] = ()
    pce_token: str | None = None
    delegations: Mapping[str, str] = field(default_factory=dict)  # in-process registry only
    drain_s: float = 1.0
    resync_s: float = 30.0
    port_base: int = 20000
    sr_urls: Mapping[str, str] = field(default_factory=dict)  # SR id -> URL (FLAME_SR_URL)
    allow_unconfined_sfes: bool = False
    vim_agents: Mapping[str, str] = field(default_factory=dict)  # cluster -> agent URL
    vim_token: str | None = None
    kubeconfigs: Mapping[str | None, Path] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True  # certificates of HTTPS PCEs and agents

    @property
    def database(self) -> str:
        return self.db or str(self.state_dir / "sfemc.sqlite3")

    @property
    def images_path(self) -> Path:
        return self.images_dir or self.state_dir / "images"


@dataclass(frozen=True)
class SfemcParts:
    """Parts given instead of built from the settings: tests' in-memory VIMs and registrar.
    `images` None means no image checks (templates may name images no repository holds)."""

    vims: Mapping[str, VimDriver]
    registrar: Registrar
    images: ImageResolver | None = None


def build_sfemc(
    settings: SfemcSettings,
    topology: Topology,
    bus: EventBus,
    *,
    parts: SfemcParts | None = None,
) -> Runtime:
    """The SFEMC and what it drives (not started: the orchestrator API's lifespan starts it).

    SFEs run sandboxed (bubblewrap); where this host cannot, they are refused unless
    `allow_unconfined_sfes` lets them run as this process's user (docs/sfemc.md)."""
    unserved: dict[str, str] = {}
    images: ImageResolver | None
    if parts is not None:
        vims, registrar, images = dict(parts.vims), parts.registrar, parts.images
    else:
        registrar = _registrar(settings)
        repository = ImageRepository(settings.images_path)
        vims, unserved = build_vims(
            topology,
            state_dir=settings.state_dir,
            images=repository,
            port_base=settings.port_base,
            sr_urls=settings.sr_urls,
            allow_unconfined_sfes=settings.allow_unconfined_sfes,
            vim_agents=settings.vim_agents,
            vim_token=settings.vim_token,
            vim_verify=settings.verify,
            kubeconfigs=settings.kubeconfigs,
            process_options=_endpoint_certs(settings.pce_urls, settings.pce_token, settings.verify),
        )
        images = repository
    store = open_store(settings.database)
    sfemc = Sfemc(
        store,
        bus,
        topology,
        vims,
        registrar,
        drain_s=settings.drain_s,
        resync_s=settings.resync_s,
        images=images,
    )
    return Runtime(sfemc, vims, registrar, unserved)


def _endpoint_certs(
    urls: tuple[str, ...], token: str | None, verify: ssl.SSLContext | bool
) -> dict[str, Any]:
    """ProcessVim's source of endpoint certificates for SFEs that opt in to hop-by-hop TLS:
    the PCEs endpoints are registered at, with the same token (none without a PCE)."""
    if not urls:
        return {}
    return {"endpoint_certs": PceEndpointCerts(urls, token, verify=verify)}


def _registrar(settings: SfemcSettings) -> Registrar:
    if settings.pce_urls:
        return HttpRegistrar(list(settings.pce_urls), settings.pce_token, verify=settings.verify)
    return InProcessRegistrar(settings.delegations)


def no_tokens_warning(tokens: TokenStore, advice: str) -> str | None:
    """The start-up warning of a server whose token store is empty (every request gets 401)."""
    if tokens.list():
        return None
    return f"no API tokens in {tokens.path}; every request will get 401. {advice}"


# -- the VIM agent (`flame serve vim`) ---------------------------------------------------------


@dataclass(frozen=True)
class VimAgentSettings:
    """A VIM agent: the process clusters of `topology_path` whose SFEs run on this host."""

    clusters: tuple[str, ...]
    topology_path: Path
    state_dir: Path  # its token store (tokens.json) and, by default, `root`
    token: str | None  # for the image repository and the CLMC
    images_url: str  # the orchestrator whose repository images are pulled from
    root: Path | None = None  # SFEs and the image cache (default: <state_dir>/vim-agent)
    host: str | None = None  # default: the first cluster's address
    port_base: int = 20000
    sr_urls: Mapping[str, str] = field(default_factory=dict)
    allow_unconfined_sfes: bool = False
    clmc_url: str | None = None  # resource metrics go here (none without one)
    # PCEs that issue endpoint certificates (hop-by-hop TLS) with `token`; none: SFEs whose
    # image opts in run plain and say so in their log.
    pce_urls: tuple[str, ...] = ()
    metrics_interval_s: float = 2.0
    verify: ssl.SSLContext | bool = True
    # More `ProcessVim` options (grace_s, boot_timeout_s, ...): tests shorten its waits.
    process_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def root_path(self) -> Path:
        return self.root or self.state_dir / "vim-agent"


@dataclass(frozen=True)
class VimAgent:
    app: Any  # the agent's FastAPI app
    vim: ProcessVim
    host: str  # where it listens
    hosts: Mapping[str, str]  # cluster -> the address its SFEs use

    def describe(self, settings: VimAgentSettings) -> str:
        where = ", ".join(f"{c} {self.hosts[c]}" for c in settings.clusters)
        return f"SFEs on {where}; images from {settings.images_url}; state {settings.root_path}"


def build_vim_agent(settings: VimAgentSettings, *, warn: Warn) -> VimAgent:
    """The agent's app over this host's process VIM; `warn` hears what the operator should
    know at start (an empty token store)."""
    topology = load_topology(settings.topology_path)
    vim = build_agent_vim(
        topology,
        list(settings.clusters),
        settings.root_path,
        port_base=settings.port_base,
        sr_urls=settings.sr_urls,
        allow_unconfined=settings.allow_unconfined_sfes,
        **_endpoint_certs(settings.pce_urls, settings.token, settings.verify),
        **settings.process_options,
    )
    tokens = TokenStore(settings.state_dir / "tokens.json")
    warning = no_tokens_warning(
        tokens,
        "Copy the token store from the control host, or issue one with 'flame token issue "
        "NAME --operator' and give it to the orchestrator (--vim-token).",
    )
    if warning:
        warn(warning)
    source = settings.images_url
    images = ImageSource(vim.repository, source, settings.token, verify=settings.verify)
    # Refused now, not at the first placement: the token would go to the repository in clear.
    require_private_url(source, settings.token, what="the image repository (--images)")
    on_close = _agent_metrics(vim, settings)
    app = create_agent_app(vim, tokens, images=images, on_close=on_close)
    listen = settings.host or vim.hosts.get(settings.clusters[0], vim.host)
    return VimAgent(app, vim, listen, dict(vim.hosts))


def _agent_metrics(
    vim: ProcessVim, settings: VimAgentSettings
) -> Callable[[], Awaitable[None]] | None:
    if not settings.clmc_url or settings.metrics_interval_s <= 0:
        return None
    require_private_url(settings.clmc_url, settings.token, what="the CLMC (--clmc)")
    reporter = for_process_vim(
        vim,
        settings.clmc_url,
        settings.token,
        interval_s=settings.metrics_interval_s,
        verify=settings.verify,
    )

    async def close() -> None:
        reporter.close()

    return close
