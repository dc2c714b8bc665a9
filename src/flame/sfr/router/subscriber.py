"""Where the SR's forwarding table comes from: the PCE (long-poll) or a fixed table.

`TableSubscriber` (SFR-11, SFR-20) long-polls each PCE URL in order:

    GET {pce}/v1/tables/{sr}?since={version}&wait={s}   Authorization: Bearer <token>
    -> 200 + ForwardingTable JSON: apply it if newer, persist it, poll again
    -> 304: nothing changed within `wait` seconds, poll again

A URL that does not answer (or answers anything else) is skipped for the next one, the
standby PCE; when none answers the SR keeps forwarding on its last table and retries with a
doubling back-off. `X-Flame-Pce-Generation` identifies the PCE's database: versions compare
only within one generation, so a table from a new generation is applied even if its version
is lower (the database was replaced and versions restarted).

The last table is optionally kept in a JSON file (atomically replaced) so that a restarted SR
forwards at once, before any PCE answers. `StaticTableSource` serves a fixed table (tests,
a table file without PCE).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from flame.common.atomicfile import atomic_write
from flame.common.backoff import Backoff
from flame.sfr.models import ForwardingTable

__all__ = [
    "ApplyTable",
    "StaticTableSource",
    "TableSource",
    "TableSubscriber",
    "load_table_file",
    "save_table_file",
]

log = logging.getLogger(__name__)

GENERATION_HEADER = "X-Flame-Pce-Generation"

ApplyTable = Callable[[ForwardingTable, bool], bool]
"""apply(table, force) -> whether it is now in use; force: a new PCE generation."""


class TableSource(Protocol):
    def initial(self) -> ForwardingTable | None:
        """A table to start with, before `run` has anything."""
        ...

    async def run(self, apply: ApplyTable) -> None:
        """Deliver tables to `apply` until cancelled."""
        ...


class StaticTableSource:
    """A fixed table, replaced only by `push` (tests and PCE-less set-ups)."""

    def __init__(self, table: ForwardingTable | None = None) -> None:
        self._table = table
        self._apply: ApplyTable | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> StaticTableSource:
        table, _ = load_table_file(Path(path))
        return cls(table)

    def initial(self) -> ForwardingTable | None:
        return self._table

    async def run(self, apply: ApplyTable) -> None:
        self._apply = apply

    def push(self, table: ForwardingTable, *, force: bool = False) -> bool:
        self._table = table
        return self._apply(table, force) if self._apply is not None else False

    def describe(self) -> dict[str, Any]:
        """For the status endpoint."""
        return {"kind": "static"}


class TableSubscriber:
    """Long-polls the PCE(s) for this SR's forwarding table."""

    def __init__(
        self,
        sr_id: str,
        urls: tuple[str, ...] | list[str],
        *,
        token: str | None = None,
        wait: float = 25.0,
        table_file: str | os.PathLike[str] | None = None,
        backoff_initial: float = 0.5,
        # A poll nobody answers costs a refused connection, so the SR keeps asking at least once a
        # second: a PCE that is back (a restart, a standby taking over) is found within that, and
        # switches decided meanwhile reach users (issue 14: with 10 s they came 6.4 s late).
        backoff_max: float = 1.0,
        connect_timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not urls:
            raise ValueError("TableSubscriber needs at least one PCE URL")
        self._verify = verify  # the platform CA for a PCE on https (another host)
        self.sr_id = sr_id
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.wait = wait
        self.table_file = Path(table_file) if table_file is not None else None
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._transport = transport
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.version: int | None = None  # of the table in use
        self.generation: str | None = None  # of the PCE database it came from
        self.active_url: str | None = None
        self.polls = 0
        self.failures = 0
        self.applied = 0

    def initial(self) -> ForwardingTable | None:
        if self.table_file is None or not self.table_file.exists():
            return None
        try:
            table, generation = load_table_file(self.table_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "ignoring the saved table %s: %s; waiting for the PCE", self.table_file, exc
            )
            return None
        self.version = table.version
        self.generation = generation
        log.info("starting with saved table version %d from %s", table.version, self.table_file)
        return table

    async def run(self, apply: ApplyTable) -> None:
        timeout = httpx.Timeout(self.wait + 10.0, connect=self._connect_timeout)
        async with httpx.AsyncClient(
            transport=self._transport,
            trust_env=False,
            timeout=timeout,
            headers=self._headers,
            verify=self._verify,
        ) as client:
            backoff = Backoff(self.backoff_initial, self.backoff_max)
            while True:
                progressed = None
                for url in self.urls:
                    progressed = await self._poll_one(client, url, apply)
                    if progressed is not None:
                        break
                if progressed:
                    backoff.reset()
                    continue
                delay = backoff.failure()
                if progressed is None and delay < self.backoff_max:  # not once a second for good
                    log.warning(
                        "no PCE answered (%s); forwarding on table version %s; retrying in %.1fs",
                        ", ".join(self.urls),
                        self.version,
                        delay,
                    )
                # Nobody answered, or an answer that did not move us on: do not spin.
                await asyncio.sleep(delay)

    async def _poll_one(
        self, client: httpx.AsyncClient, url: str, apply: ApplyTable
    ) -> bool | None:
        """One long-poll: True if it moved us on (table or 304), False if it answered
        something useless, None if this PCE did not answer."""
        self.polls += 1
        try:
            response = await client.get(
                f"{url}/v1/tables/{self.sr_id}",
                params={"since": self.version or 0, "wait": self.wait},
            )
        except httpx.HTTPError as exc:
            self.failures += 1
            log.info(
                "PCE %s did not answer (%s: %s); trying the next", url, type(exc).__name__, exc
            )
            return None
        generation = response.headers.get(GENERATION_HEADER) or None
        if response.status_code == 304:
            self._switch_url(url)
            if generation and self.generation and generation != self.generation:
                # The PCE's database was replaced: our version means nothing there any more.
                log.warning(
                    "PCE generation changed (%s -> %s); resynchronising",
                    self.generation,
                    generation,
                )
                self.version = None
            return True
        if response.status_code != 200:
            self.failures += 1
            log.warning(
                "PCE %s answered %d for SR %r (%s); trying the next",
                url,
                response.status_code,
                self.sr_id,
                response.text[:200],
            )
            return None
        self._switch_url(url)
        try:
            table = ForwardingTable.from_dict(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("PCE %s sent a table that cannot be read (%s); trying the next", url, exc)
            return None
        force = bool(generation and self.generation and generation != self.generation)
        if self.version is not None and table.version <= self.version and not force:
            log.info(
                "ignoring table version %d from %s: version %d is in use",
                table.version,
                url,
                self.version,
            )
            return False
        if not apply(table, force):
            return False
        self.version = table.version
        self.generation = generation or self.generation
        self.applied += 1
        if self.table_file is not None:
            try:
                await asyncio.to_thread(save_table_file, self.table_file, table, self.generation)
            except OSError as exc:
                log.warning(
                    "cannot save the table to %s (%s); a restart will wait for the PCE",
                    self.table_file,
                    exc,
                )
        return True

    def describe(self) -> dict[str, Any]:
        """For the status endpoint: which PCE is followed, polls and failed polls so far."""
        return {
            "kind": "pce",
            "active_url": self.active_url,
            "version": self.version,
            "polls": self.polls,
            "failures": self.failures,
            "applied": self.applied,
        }

    def _switch_url(self, url: str) -> None:
        if url != self.active_url:
            if self.active_url is not None:
                log.warning("now following PCE %s (was %s)", url, self.active_url)
            self.active_url = url


def load_table_file(path: Path) -> tuple[ForwardingTable, str | None]:
    """A saved table: either `{"table": {...}, "pce_generation": ...}` or a bare table."""
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} does not hold a JSON object")
    if "table" in data:
        generation = data.get("pce_generation")
        return ForwardingTable.from_dict(data["table"]), str(generation) if generation else None
    return ForwardingTable.from_dict(data), None


def save_table_file(path: Path, table: ForwardingTable, generation: str | None = None) -> None:
    """Replace `path` atomically: a reader (a restarting worker) never sees half a table."""
    payload = json.dumps(
        {"pce_generation": generation, "table": table.to_dict()}, separators=(",", ":")
    )
    atomic_write(path, payload, mode=0o600)  # 0600 as before (mkstemp's mode)
