"""A real orchestrator + SFEMC served by uvicorn on a loopback port, for API and e2e tests.

Built by the factory `flame serve orchestrator` uses (`flame.orchestrator.build`), with the
test's VIMs and registrar in place of the ones the settings would build, and no CLMC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.orchestrator.alerts import InProcessAlertSink
from flame.orchestrator.build import OrchestratorSettings, build_orchestrator
from flame.sfemc.build import SfemcParts, SfemcSettings
from flame.sfemc.control import ImageResolver, Sfemc
from flame.sfemc.events import InProcessBus
from flame.sfemc.registrar import Registrar
from flame.sfemc.vim.base import VimDriver

ROOT = Path(__file__).resolve().parents[2]
SANDPIT = ROOT / "examples" / "topology" / "sandpit.yaml"
VOD = ROOT / "examples" / "vod-edge-cache" / "service.yaml"


@dataclass
class Platform:
    url: str
    sfemc: Sfemc
    alerts: InProcessAlertSink
    bus: InProcessBus
    operator: str
    acme: str
    globex: str

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    async def settle(self, timeout: float = 20.0) -> None:
        await self.sfemc.reconciler.wait_idle(timeout)


@asynccontextmanager
async def running_platform(
    tmp: Path,
    vims: Mapping[str, VimDriver],
    registrar: Registrar,
    *,
    topology: Path = SANDPIT,
    drain_s: float = 0.0,
    images: ImageResolver | None = None,
) -> AsyncIterator[Platform]:
    tokens = TokenStore(tmp / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    acme = tokens.issue("acme", Role.TENANT, "acme")
    globex = tokens.issue("globex", Role.TENANT, "globex")
    settings = OrchestratorSettings(
        topology_path=topology,
        sfemc=SfemcSettings(state_dir=tmp, db=str(tmp / "sfemc.db"), drain_s=drain_s, resync_s=0),
        clmc_url=None,
    )
    built = build_orchestrator(
        settings, warn=_no_warning, parts=SfemcParts(vims, registrar, images=images)
    )
    assert isinstance(built.alerts, InProcessAlertSink)
    app = built.app
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve(), name="test-orchestrator")
    for _ in range(500):
        if server.started:
            break
        if task.done():
            await task
        await asyncio.sleep(0.01)
    try:
        yield Platform(
            f"http://127.0.0.1:{port}",
            built.runtime.sfemc,
            built.alerts,
            built.bus,
            operator,
            acme,
            globex,
        )
    finally:
        server.should_exit = True
        await task  # the app's lifespan closes the SFEMC, its store, VIMs and registrar


def _no_warning(message: str) -> None:
    raise AssertionError(f"the test platform warned: {message}")
