"""Issue 13 item 2a: the cluster agent's API and the remote VIM driver, in one process.

The agent app (`flame.sfemc.agent`) runs a real, sandboxed process VIM whose cluster has its own
address (127.0.3.3 here, as a routable address would be on another host); `RemoteVim` reaches
it through httpx's ASGI transport; images come from an orchestrator-like server (the SFEMC's
routes, behind the bearer-token middleware) over real HTTP, checked on arrival and cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from flame.common.access import require_declared
from flame.common.auth import Role, TokenStore
from flame.common.http_api import BearerAuth, install_errors
from flame.common.ports import free_port
from flame.sfemc.agent import ImageSource
from flame.sfemc.api import sfemc_router
from flame.sfemc.build import VimAgentSettings, build_vim_agent
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim.base import EndpointSpec, VimError, VimState, VimUnreachable
from flame.sfemc.vim.remote import RemoteVim
from ranges import sfe_port_base

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "examples" / "sf" / "echo"
ADDRESS = "127.0.3.3"
TOPOLOGY = f"""\
flame_topology: 1
name: one-edge
service_routers:
  sr-e: {{address: {ADDRESS}}}
clusters:
  edge: {{sr: sr-e, address: {ADDRESS}, capacity: {{cpus: 4, memory: 4 GB, disk: 10 GB}}}}
  other: {{sr: sr-e, capacity: {{cpus: 4, memory: 4 GB, disk: 10 GB}}}}
"""


@dataclass
class Served:
    url: str
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[TokenStore, str, str]:
    store = TokenStore(tmp_path / "tokens.json")
    return (
        store,
        store.issue("sfemc", Role.OPERATOR),
        store.issue("acme", Role.TENANT, "acme"),
    )


@pytest.fixture
def origin(tmp_path: Path) -> ImageRepository:
    repo = ImageRepository(tmp_path / "control-images")
    repo.put(build_image(ECHO)[0], tags=["1.0"])
    return repo


@pytest.fixture
def orchestrator(origin: ImageRepository, tokens: tuple[TokenStore, str, str]) -> Iterator[Served]:
    """The orchestrator's image routes (the SFEMC router), behind its bearer-token check."""
    served = Served("")
    app = FastAPI()
    app.add_middleware(BearerAuth, tokens=tokens[0])
    install_errors(app, "the orchestrator")
    app.include_router(sfemc_router(SimpleNamespace(images=origin)))  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        served.requests.append(request.url.path)
        response: Response = await call_next(request)
        return response

    require_declared(app)
    with serve(app) as url:
        served.url = url
        yield served


@dataclass
class Agent:
    remote: RemoteVim
    cache: ImageRepository
    root: Path


@pytest_asyncio.fixture
async def agent(
    tmp_path: Path,
    origin: ImageRepository,
    orchestrator: Served,
    tokens: tuple[TokenStore, str, str],
) -> AsyncIterator[Agent]:
    _, operator, _ = tokens
    base = sfe_port_base()  # two clusters' ranges, apart from free_port's (ranges.py)
    (tmp_path / "one-edge.yaml").write_text(TOPOLOGY)
    built = build_vim_agent(  # as `flame serve vim` builds it
        VimAgentSettings(
            clusters=("edge",),
            topology_path=tmp_path / "one-edge.yaml",
            state_dir=tmp_path,  # the `tokens` fixture's store
            token=operator,
            images_url=orchestrator.url,
            root=tmp_path / "agent",
            port_base=base,
            process_options={"grace_s": 2.0, "boot_timeout_s": 15.0},
        ),
        warn=pytest.fail,
    )
    vim, app = built.vim, built.app
    remote = RemoteVim(
        "http://localhost",
        operator,
        ["edge"],
        repository=origin,
        transport=httpx.ASGITransport(app=app),
    )
    yield Agent(remote, vim.repository, tmp_path / "agent")
    for status in await vim.list():
        await vim.remove(status.sfe)
    await vim.close()
    await remote.close()
    shutil.rmtree(tmp_path / "agent", ignore_errors=True)


def spec(image: str = "echo:1.0", sfe: str = "i1.echo.edge", cluster: str = "edge") -> EndpointSpec:
    return EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="i1",
        sf="echo",
        cluster=cluster,
        fqdn="echo.example",
        image=image,
    )


async def test_place_boot_serve_stop_remove_through_the_agent(
    agent: Agent, orchestrator: Served, origin: ImageRepository
) -> None:
    digest = origin.resolve("echo:1.0")
    placed = await agent.remote.place(spec())
    assert placed.state is VimState.PLACED
    assert orchestrator.requests == [f"/v1/images/{digest}"]  # pulled by digest, once
    assert [i.digest for i in agent.cache.list()] == [digest]
    running = await agent.remote.boot("i1.echo.edge")
    assert running.state is VimState.RUNNING
    assert running.host == ADDRESS  # the cluster host's address, not 127.0.0.1
    port = running.ports["http"]
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.get(f"http://{ADDRESS}:{port}/hello")
    assert answer.json()["sfe"] == "i1.echo.edge"
    assert answer.json()["path"] == "/hello"
    # Bound to the cluster's address only: not reachable on another loopback address.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert (await agent.remote.status("i1.echo.edge")).state is VimState.RUNNING
    assert [s.sfe for s in await agent.remote.list()] == ["i1.echo.edge"]
    assert any("GET /hello" in line for line in await agent.remote.logs("i1.echo.edge"))
    # Idempotent: placing again changes nothing and fetches nothing.
    again = await agent.remote.place(spec())
    assert again.state is VimState.RUNNING
    assert len(orchestrator.requests) == 1
    assert (await agent.remote.stop("i1.echo.edge")).state is VimState.STOPPED
    await agent.remote.remove("i1.echo.edge")
    await agent.remote.remove("i1.echo.edge")  # idempotent
    assert await agent.remote.list() == []
    # The cache keeps the image: a new placement of it fetches nothing.
    await agent.remote.place(spec(sfe="i2.echo.edge"))
    assert len(orchestrator.requests) == 1
    assert await agent.remote.available()
    described = await agent.remote.describe()
    assert described["clusters"]["edge"]["host"] == ADDRESS


async def test_errors_keep_their_meaning_across_the_network(
    agent: Agent, tokens: tuple[TokenStore, str, str], tmp_path: Path
) -> None:
    # The process VIM's own refusal: permanent, with its reason.
    with pytest.raises(VimError) as info:
        await agent.remote.boot("never.placed.edge")
    assert info.value.permanent
    assert "not placed" in info.value.reason
    # A cluster the agent does not serve.
    with pytest.raises(VimError) as info:
        await agent.remote.place(spec(cluster="other", sfe="i1.echo.other"))
    assert info.value.permanent
    # An image the SFEMC's repository does not hold: refused before any request.
    with pytest.raises(VimError) as info:
        await agent.remote.place(spec(image="nope:1"))
    assert info.value.permanent
    # A token the agent refuses: unreachable (nothing known), never permanent.
    transport = agent.remote._http._transport
    tenant = RemoteVim("http://localhost", tokens[2], ["edge"], transport=transport)
    with pytest.raises(VimUnreachable) as unreach:
        await tenant.status("i1.echo.edge")
    assert "refused this SFEMC's token (403" in unreach.value.reason
    # An agent that is not there at all.
    closed = free_port()  # nothing listens: not a released bind(0) port another test may get
    gone = RemoteVim(f"http://127.0.0.1:{closed}", tokens[1], ["edge"], timeout_s=1)
    with pytest.raises(VimUnreachable, match="did not answer"):
        await gone.list()
    assert not await gone.available()
    await gone.close()


async def test_the_agent_refuses_what_it_does_not_understand(
    agent: Agent, tokens: tuple[TokenStore, str, str]
) -> None:
    http = agent.remote._http
    good = {
        "sfe": "i1.echo.edge",
        "tenant": "acme",
        "sfc": "svc",
        "sfci": "i1",
        "sf": "echo",
        "cluster": "edge",
        "fqdn": "echo.example",
        "image": "echo:1.0",
    }
    for body in (
        {"spec": {**good, "privileged": True}},  # an unknown key is not half-understood
        {"spec": {**good, "sfe": "other.echo.edge"}},  # path and spec disagree
        {"spec": good, "extra": 1},
        [1, 2],
    ):
        r = await http.put("/v1/sfes/i1.echo.edge", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "vim_error"
        assert r.json()["permanent"] is True
    r = await http.put("/v1/sfes/i1.echo.edge", content=b"{", headers={"content-type": "x"})
    assert r.status_code == 422


async def test_a_substituted_image_is_refused_and_never_cached(
    tmp_path: Path, origin: ImageRepository, tokens: tuple[TokenStore, str, str]
) -> None:
    """Someone between the agent and the orchestrator serves other bytes for the digest."""
    digest = origin.resolve("echo:1.0")
    evil = origin.read(digest)[:-8] + b"\0" * 8
    app = FastAPI()

    @app.get("/v1/images/{digest}")
    async def blob(digest: str) -> Response:
        return Response(evil, media_type="application/octet-stream")

    with serve(app) as url:
        cache = ImageRepository(tmp_path / "cache")
        source = ImageSource(cache, url, tokens[1])
        with pytest.raises(VimError) as info:
            await source.ensure("x.y.z", digest)
        assert not info.value.permanent  # a damaged transfer may succeed next time
        assert "hashes to sha256:" + hashlib.sha256(evil).hexdigest() in info.value.reason
        assert cache.list() == []


async def test_a_rotten_cache_entry_is_fetched_again(
    tmp_path: Path,
    origin: ImageRepository,
    orchestrator: Served,
    tokens: tuple[TokenStore, str, str],
) -> None:
    digest = origin.resolve("echo:1.0")
    cache = ImageRepository(tmp_path / "cache")
    source = ImageSource(cache, orchestrator.url, tokens[1])
    await source.ensure("x.y.z", digest)
    await source.ensure("x.y.z", digest)
    assert len(orchestrator.requests) == 1
    blob = cache.blob_path(digest)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\1")
    await source.ensure("x.y.z", digest)
    assert len(orchestrator.requests) == 2
    assert cache.verify(digest).digest == digest
    # Not in the orchestrator's repository: permanent (a retry cannot help).
    with pytest.raises(VimError) as info:
        await source.ensure("x.y.z", "sha256:" + "0" * 64)
    assert info.value.permanent
    assert "not in the orchestrator's repository" in info.value.reason


async def test_the_image_routes_need_an_operator(
    orchestrator: Served, origin: ImageRepository, tokens: tuple[TokenStore, str, str]
) -> None:
    digest = origin.resolve("echo:1.0")
    async with httpx.AsyncClient(base_url=orchestrator.url, trust_env=False) as http:
        assert (await http.get(f"/v1/images/{digest}")).status_code == 401
        tenant = {"Authorization": f"Bearer {tokens[2]}"}
        assert (await http.get(f"/v1/images/{digest}", headers=tenant)).status_code == 403
        ops = {"Authorization": f"Bearer {tokens[1]}"}
        r = await http.get(f"/v1/images/{digest}", headers=ops)
        assert r.status_code == 200
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        assert [i["digest"] for i in (await http.get("/v1/images", headers=ops)).json()] == [digest]
        assert (await http.get("/v1/images/sha256:zz", headers=ops)).status_code == 400
        # A blob corrupted at the orchestrator is never served.
        path = origin.blob_path(digest)
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
        assert (await http.get(f"/v1/images/{digest}", headers=ops)).status_code == 409
