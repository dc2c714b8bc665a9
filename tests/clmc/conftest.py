"""Fixtures for the CLMC ingest, store and API tests (not the InfluxQL ones, in influxql/)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from eventually import Fatal, eventually
from flame.clmc.api import create_app
from flame.clmc.ingest import Ingest
from flame.clmc.store.duckdb_store import DuckDBStore


@pytest.fixture
def duck() -> Iterator[DuckDBStore]:
    st = DuckDBStore()
    yield st
    st.close()


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    store.create_database("db")
    yield ing
    ing.stop()
    store.close()


@pytest_asyncio.fixture
async def client(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ingest)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clmc") as c:
        yield c


@pytest.fixture(scope="session")
def real_influx() -> Iterator[str]:
    """URL of a real InfluxDB 1.6 on loopback (Debian's influxd), stopped at the end."""
    if shutil.which("influxd") is None:
        pytest.skip(
            "influxd not installed (apt-get install -y influxdb): the compatibility tests "
            "compare us with the real InfluxDB 1.6"
        )
    from flame.clmc.influxd import InfluxDB

    with InfluxDB(max_body_size=100_000) as server:
        yield server.url


class ServerThread:
    """A real uvicorn server running a CLMC on a loopback port, in a thread."""

    def __init__(self, directory: Path, max_body_bytes: int = 25_000_000) -> None:
        import uvicorn

        from flame.clmc.httpserver import influx_http_protocol
        from flame.clmc.service import ClmcService
        from flame.common.ports import free_port

        self.service = ClmcService(directory, max_body_bytes=max_body_bytes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.service.app,
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                access_log=False,
                http=influx_http_protocol(),  # as `flame serve clmc`
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="clmc-test-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        eventually(self._started, what="the CLMC test server to start")
        return self

    def _started(self) -> bool:
        if not self.thread.is_alive():
            raise Fatal("the CLMC test server thread exited")
        return bool(self.server.started)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def clmc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real CLMC server (uvicorn, loopback), with InfluxDB's default body limit lowered to
    match `real_influx`."""
    with ServerThread(tmp_path_factory.mktemp("clmc-server"), max_body_bytes=100_000) as s:
        yield s.url
