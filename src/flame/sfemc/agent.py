"""The cluster agent: a cluster's process VIM on its own host, behind an HTTP API (issue 13).

`flame serve vim --cluster NAME --topology T.yaml` runs `ProcessVim` on the host of cluster
NAME (sandboxed SFEs, per-tenant uids, supervision and restarts, exactly as on one machine),
listening on the cluster's address from the topology. The SFEMC drives it through
`flame.sfemc.vim.remote.RemoteVim`. Every route but `/health` needs an operator token (the
SFEMC's), checked against this host's token store before anything else is read.

    GET    /health                    liveness (public, reveals the clusters only)
    GET    /v1/vim                    clusters, their addresses and port ranges, sandbox mode
    GET    /v1/sfes                   every SFE this agent runs, with state and restarts
    PUT    /v1/sfes/{sfe}             place: {"spec": {...}}; pulls the image first if needed
    GET    /v1/sfes/{sfe}             status (state, host, ports, pid, restarts, last reason)
    POST   /v1/sfes/{sfe}/boot        start it; answers once healthy (or the VIM's error)
    POST   /v1/sfes/{sfe}/stop        stop it (kept placed)
    DELETE /v1/sfes/{sfe}             stop and remove it
    GET    /v1/sfes/{sfe}/logs?tail=N its last output lines

A `VimError` of the process VIM is answered as JSON `{"error": "vim_error", "reason",
"permanent", "logs"}`: 422 when permanent, 503 when a retry may succeed.

Images: a spec names its image by digest (the SFEMC resolves names); one this host's cache
does not hold is pulled from the orchestrator's repository (`GET <images>/v1/images/<digest>`,
with this agent's operator token), its digest checked on arrival, and kept in the cache
(`<root>/images`) for the next placement. The process VIM unpacks from the cache, re-hashing
on every placement as it always does.

The agent keeps nothing in memory that matters: killed and started again, it adopts the SFE
processes still running (they outlive it on purpose) and restarts those that died meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from fastapi import FastAPI, Request

from flame import __version__
from flame.common.access import PUBLIC, OperatorOnly, require_declared
from flame.common.auth import TokenStore
from flame.common.errors import ConfigError, FlameError
from flame.common.http_api import BearerAuth, install_errors
from flame.sfemc.images import ImageError, ImageNotFound, ImageRepository, IntegrityError
from flame.sfemc.runtime import port_ranges
from flame.sfemc.vim.base import VimError
from flame.sfemc.vim.process import ProcessVim
from flame.sfemc.vim.wire import WireError, spec_from_json, status_to_json
from flame.topology.model import Topology, Vim

__all__ = [
    "AgentVimError",
    "ImageSource",
    "build_agent_vim",
    "check_local_address",
    "create_agent_app",
]

log = logging.getLogger("flame.sfemc.agent")

_MAX_BODY = 1024 * 1024


class AgentVimError(FlameError):
    """The process VIM's `VimError`, as the agent answers it (a retry may succeed)."""

    code: ClassVar[str] = "vim_error"
    http_status: ClassVar[int] = 503


class AgentVimRefused(AgentVimError):
    """A `VimError` marked permanent: repeating the request unchanged fails again."""

    http_status: ClassVar[int] = 422


def _answer(exc: VimError) -> AgentVimError:
    kind = AgentVimRefused if exc.permanent else AgentVimError
    return kind(
        f"{exc.sfe}: {exc.reason}",
        sfe=exc.sfe,
        reason=exc.reason,
        permanent=exc.permanent,
        logs=list(exc.logs),
    )


class ImageSource:
    """The orchestrator's image repository, pulled into this host's cache on demand."""

    def __init__(
        self,
        cache: ImageRepository,
        url: str | None,
        token: str | None,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.cache = cache
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.verify = verify
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, sfe: str, image: str) -> None:
        """Have `image` (a digest) in the cache; VimError saying why not."""
        if not image.startswith("sha256:"):
            return  # a name: the process VIM resolves it in the cache (or says it cannot)
        async with self._locks.setdefault(image, asyncio.Lock()):
            if self.url is None:
                return  # no repository to pull from: what the cache holds is all there is
            try:
                info = await asyncio.to_thread(
                    self.cache.pull, self.url, image, token=self.token, verify=self.verify
                )
            except ImageNotFound as exc:
                raise VimError(
                    sfe,
                    f"image {image} is not in the orchestrator's repository: {exc.message}",
                    permanent=True,
                ) from exc
            except IntegrityError as exc:
                # 409 from the orchestrator: its own copy is corrupted (a retry cannot help);
                # a mismatch on arrival: the transfer was damaged (a retry may).
                permanent = exc.context.get("status") == 409
                raise VimError(
                    sfe, f"cannot use image {image}: {exc.message}", permanent=permanent
                ) from exc
            except ImageError as exc:
                raise VimError(sfe, f"cannot pull image {image}: {exc.message}") from exc
            log.info("image %s (%s) in the cache", image[:19], info.name)


def check_local_address(address: str, what: str) -> None:
    """ConfigError unless this host can listen on `address` (it is one of its own)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            raise ConfigError(
                f"{what} has the address {address}, which is not an address of this host "
                f"({exc.strerror}); run its VIM on that host ('flame serve vim --cluster "
                "NAME') and name it to the orchestrator (--vim NAME=URL), or correct the "
                "topology"
            ) from None


def build_agent_vim(
    topology: Topology,
    clusters: list[str],
    root: Path,
    *,
    port_base: int = 20000,
    sr_urls: Mapping[str, str] | None = None,
    allow_unconfined: bool = False,
    **options: Any,
) -> ProcessVim:
    """The process VIM for `clusters` of `topology` on this host: each cluster's SFEs listen
    on (and are registered with) its topology address, 127.0.0.1 when it has none; ports come
    from the same ranges the orchestrator would give them (`port_ranges`)."""
    if not clusters:
        raise ConfigError("name at least one cluster to serve: --cluster NAME")
    ranges = port_ranges(topology, port_base)
    hosts: dict[str, str] = {}
    for name in clusters:
        node = topology.clusters.get(name)
        if node is None:
            known = ", ".join(sorted(topology.clusters)) or "none"
            raise ConfigError(f"no cluster '{name}' in topology '{topology.name}' (known: {known})")
        if node.vim not in (None, Vim.PROCESS):
            raise ConfigError(
                f"cluster '{name}' runs on {node.vim}, not on a process VIM: the SFEMC drives "
                "it directly (--kubeconfig), no agent is needed"
            )
        hosts[name] = node.address or "127.0.0.1"
        check_local_address(hosts[name], f"cluster '{name}'")
    srs = dict(sr_urls or {})
    by_cluster = {
        name: srs[node.sr]
        for name, node in topology.clusters.items()
        if name in clusters and node.sr is not None and node.sr in srs
    }
    return ProcessVim(
        root / "vim",
        {name: ranges[name] for name in clusters},
        ImageRepository(root / "images"),
        host=hosts[clusters[0]],
        hosts=hosts,
        sr_urls=by_cluster,
        allow_unconfined=allow_unconfined,
        **options,
    )


def create_agent_app(
    vim: ProcessVim,
    tokens: TokenStore,
    *,
    images: ImageSource | None = None,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The agent's API over `vim`. Its lifespan adopts what runs (resuming supervision at once,
    not when the SFEMC next asks) and, on the way out, stops supervising but leaves the SFEs
    running for the next agent."""
    images = images or ImageSource(vim.repository, None, None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        adopted = await vim.list()
        if adopted:
            log.info(
                "serving %d SFE(s) found on this host: %s",
                len(adopted),
                ", ".join(f"{s.sfe} {s.state}" for s in adopted),
            )
        try:
            yield
        finally:
            await vim.close()
            if on_close is not None:
                await on_close()

    app = FastAPI(
        title="FLAME cluster agent (process VIM)",
        version=__version__,
        description="Runs SFEs on this host for the SFEMC (issue 13).",
        lifespan=lifespan,
    )
    app.add_middleware(BearerAuth, tokens=tokens)
    install_errors(app, "the VIM agent")

    async def call(coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except VimError as exc:
            raise _answer(exc) from None

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "clusters": sorted(vim.ports.ranges)}

    @app.get("/v1/vim")
    async def describe(caller: OperatorOnly) -> dict[str, Any]:
        """What this agent serves: clusters with their address and port range, the sandbox."""
        return {
            "kind": vim.kind,
            "clusters": {
                name: {
                    "host": vim.hosts.get(name, vim.host),
                    "ports": [span.start, span.stop - 1],
                }
                for name, span in sorted(vim.ports.ranges.items())
            },
            "sandbox": vim.sandbox_mode,
            "allow_unconfined": vim.allow_unconfined,
            "images": images.url,
        }

    @app.get("/v1/sfes")
    async def listing(caller: OperatorOnly) -> list[dict[str, Any]]:
        return [status_to_json(s) for s in await call(vim.list())]

    @app.put("/v1/sfes/{sfe}")
    async def place(sfe: str, request: Request, caller: OperatorOnly) -> dict[str, Any]:
        raw = await request.body()
        try:
            if len(raw) > _MAX_BODY:
                raise WireError(f"the request body is over {_MAX_BODY} bytes")
            try:
                doc = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise WireError(f"the request body is not JSON: {exc}") from None
            if not isinstance(doc, dict) or set(doc) != {"spec"}:
                raise WireError('the body must be {"spec": {...}}')
            spec = spec_from_json(doc["spec"])
            if spec.sfe != sfe:
                raise WireError(f"the spec is of {spec.sfe!r}, the path of {sfe!r}")
        except WireError as exc:
            raise _answer(VimError(sfe, str(exc), permanent=True)) from None
        await call(images.ensure(sfe, spec.image))
        return status_to_json(await call(vim.place(spec)))

    @app.get("/v1/sfes/{sfe}")
    async def status(sfe: str, caller: OperatorOnly) -> dict[str, Any]:
        return status_to_json(await call(vim.status(sfe)))

    @app.post("/v1/sfes/{sfe}/boot")
    async def boot(sfe: str, caller: OperatorOnly) -> dict[str, Any]:
        return status_to_json(await call(vim.boot(sfe)))

    @app.post("/v1/sfes/{sfe}/stop")
    async def stop(sfe: str, caller: OperatorOnly) -> dict[str, Any]:
        return status_to_json(await call(vim.stop(sfe)))

    @app.delete("/v1/sfes/{sfe}")
    async def remove(sfe: str, caller: OperatorOnly) -> dict[str, Any]:
        await call(vim.remove(sfe))
        return {"sfe": sfe, "removed": True}

    @app.get("/v1/sfes/{sfe}/logs")
    async def logs(sfe: str, caller: OperatorOnly, tail: int = 100) -> dict[str, Any]:
        lines = await call(vim.logs(sfe, max(1, min(tail, 10000))))
        return {"sfe": sfe, "lines": lines}

    return require_declared(app)
