"""The CLMC's alerting service: the engine, its clock, event delivery, recent events, and the
rules persisted so that a restarted CLMC keeps evaluating what the orchestrator handed it.

A rule whose webhook the operator's outbound policy refuses (`flame.clmc.alerts.outbound`) is
not stored: `put` raises `WebhookRefused`, a `ValueError` naming the rule and the URL, which
the route answers with 400."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.alerts.engine import DEFAULT_DATABASE, AlertEngine, AlertEvent, rules_from_dicts
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.outbound import WebhookRefused
from flame.common.atomicfile import atomic_write
from flame.common.nats_events import NatsEvents, subject

__all__ = ["AlertService"]

log = logging.getLogger(__name__)


class AlertService:
    def __init__(
        self,
        rules_path: Path | None,
        notifier: Notifier,
        *,
        tick_s: float = 0.25,
        lateness_s: float = 0.5,
        sliding: bool = True,
        keep_events: int = 1000,
        nats_url: str | None = None,
    ) -> None:
        self.engine = AlertEngine(lateness_s=lateness_s, sliding=sliding)
        self.notifier = notifier
        self.rules_path = rules_path
        self.tick_s = tick_s
        self.events: collections.deque[AlertEvent] = collections.deque(maxlen=keep_events)
        # Distributed deployments may carry alert events over NATS as well as webhooks; the
        # SFEMC drops the second copy of an event by its id.
        self.nats_url = nats_url
        self._nats: NatsEvents | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        # Live subscribers (server-sent events): a bounded queue each; a subscriber too slow to
        # keep up loses its oldest events rather than holding back evaluation.
        self._listeners: set[asyncio.Queue[AlertEvent]] = set()
        self._task: asyncio.Task[None] | None = None
        # Data arrives on the ingest's applier thread, windows close on the event loop.
        self._lock = threading.Lock()
        self._specs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._load()

    # -- rules (what the orchestrator hands over) -------------------------------------------------

    def put(
        self,
        tenant: str,
        sfc: str,
        sfci: str,
        rules: list[dict[str, Any]],
        database: str = DEFAULT_DATABASE,
        *,
        check_webhooks: bool = True,
    ) -> list[str]:
        """Replace the rules of one chain instance. Raises KeyError/ValueError on a malformed
        rule and `WebhookRefused` (a ValueError) on a webhook the outbound policy refuses."""
        parsed = rules_from_dicts(rules)
        policy = self.notifier.outbound
        for rule in parsed:
            for url in rule.webhooks:
                try:
                    policy.check(url, resolve=check_webhooks)
                except WebhookRefused as exc:
                    if check_webhooks:
                        raise WebhookRefused(f"alert rule {rule.name!r}: {exc.message}") from None
                    # Stored before the policy changed: kept (its other handlers still get
                    # events) but this webhook is refused at every delivery.
                    log.warning("stored alert rule %s of %s/%s: %s", rule.name, sfc, sfci, exc)
        with self._lock:
            keys = self.engine.set_rules(tenant, sfc, sfci, parsed, database=database)
        self._specs[(tenant, sfc, sfci)] = {"rules": rules, "database": database}
        self._save()
        return [k.name for k in keys]

    def delete(self, tenant: str, sfc: str, sfci: str | None = None) -> int:
        with self._lock:
            removed = self.engine.remove_rules(tenant, sfc, sfci)
        for key in [k for k in self._specs if k[:2] == (tenant, sfc) and sfci in (None, k[2])]:
            del self._specs[key]
        self._save()
        return removed

    def _save(self) -> None:
        if self.rules_path is None:
            return
        data = [
            {"tenant": t, "sfc": c, "sfci": i, **spec} for (t, c, i), spec in self._specs.items()
        ]
        # 0600: every tenant's rules (and webhook addresses) in one file, for the CLMC only
        atomic_write(self.rules_path, json.dumps(data), mode=0o600)

    def _load(self) -> None:
        if self.rules_path is None or not self.rules_path.exists():
            return
        for item in json.loads(self.rules_path.read_text(encoding="utf-8")):
            try:
                self.put(
                    item["tenant"],
                    item["sfc"],
                    item["sfci"],
                    item["rules"],
                    item["database"],
                    check_webhooks=False,  # no DNS at start-up; delivery checks each time
                )
            except (KeyError, ValueError) as exc:
                log.error(
                    "ignoring stored alert rules %s/%s: %s", item.get("sfc"), item.get("sfci"), exc
                )

    # -- the clock ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        if self.nats_url is not None:
            self._nats = await NatsEvents.connect(self.nats_url, name="flame-clmc")
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.evaluate()
            except Exception:  # one bad rule must not stop alerting for everyone
                log.exception("alert evaluation failed")

    def observe(self, database: str, measurement: str, rows: pa.Table) -> None:
        with self._lock:
            self.engine.observe(database, measurement, rows)

    def evaluate(self, now_ns: int | None = None) -> list[AlertEvent]:
        with self._lock:
            events = self.engine.tick(now_ns)
        for event in events:
            log.info("%s", event.message)
            self.events.append(event)
            for queue in self._listeners:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(event)
            with contextlib.suppress(RuntimeError):  # no loop: evaluate() called synchronously
                self.notifier.send(event)
                if self._nats is not None:
                    self._publish(self._nats, event)
        return events

    def _publish(self, nats: NatsEvents, event: AlertEvent) -> None:
        async def publish() -> None:
            try:
                await nats.publish(subject("alerts", event.tenant, event.sfc), event.to_dict())
            except Exception as exc:  # the webhook path still carries it
                log.warning("alert event %s not published on NATS: %s", event.id, exc)

        task = asyncio.get_running_loop().create_task(publish())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    @contextlib.contextmanager
    def listen(self, size: int = 256) -> Iterator[asyncio.Queue[AlertEvent]]:
        """A queue receiving every event from now on, while the block runs."""
        queue: asyncio.Queue[AlertEvent] = asyncio.Queue(maxsize=size)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def recent(self, tenant: str | None = None, limit: int = 100) -> list[AlertEvent]:
        chosen = [e for e in self.events if tenant is None or e.tenant == tenant]
        return chosen[-limit:]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.notifier.close()
        if self._nats is not None:
            await self._nats.close()
