"""Fixtures of the transcoder tests: small real clips (made once per session), a real CLMC."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from eventually import eventually
from flame.common.ports import free_port
from media.contentkit import make_clip


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 640x360 testsrc2 with a tone: the source of most jobs."""
    return make_clip(tmp_path_factory.mktemp("clips") / "src.mp4", size="640x360", seconds=4,
                     crf=16)  # fmt: skip


@pytest.fixture
def clmc(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The platform's CLMC on loopback; yields (url, a token of tenant acme)."""
    from flame.clmc.service import ClmcService
    from flame.clmc.tenancy import StaticDelegations
    from flame.common.auth import Role, TokenStore

    store = TokenStore(tmp_path / "clmc-tokens.json")
    token = store.issue("acme-transcoder", Role.TENANT, "acme")
    service = ClmcService(tmp_path / "clmc", store, fsync=False, delegations=StaticDelegations({}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, every=0.02, what="the server to start")
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)
