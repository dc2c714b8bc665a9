"""Delivery of alert events to their handlers: the SFEMC (`flame_sfemc`) and webhooks.

Each delivery is its own task with a few retries, so a slow or dead handler never holds back
the evaluation loop or another handler; what could not be delivered is logged and counted.

Webhooks are the tenants' choice, so they go out only as the operator's outbound policy allows
(`flame.clmc.alerts.outbound`): checked against the addresses their host has at delivery time,
connected to the checked address, never redirected. The SFEMC's URL is the operator's own
configuration and is exempt; only it gets the platform's token.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from flame.clmc.alerts.engine import AlertEvent
from flame.clmc.alerts.outbound import OutboundPolicy, PinnedTransport, WebhookRefused

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

RETRY_DELAYS_S: Sequence[float] = (0.2, 0.5, 1.0)


@dataclass(slots=True)
class Notifier:
    sfemc_url: str | None  # the SFEMC's event webhook, e.g. http://127.0.0.1:7080/v1/sfemc/events
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 3.0
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    verify: ssl.SSLContext | bool = True  # the platform CA for an https SFEMC
    delivered: int = 0
    failed: int = 0
    refused: int = 0  # webhooks the outbound policy refused at delivery (also in `failed`)
    _client: httpx.AsyncClient | None = None  # the SFEMC's
    _webhooks: httpx.AsyncClient | None = None  # tenants' webhooks, through the policy
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def targets(self, event: AlertEvent) -> list[str]:
        urls = list(event.webhooks)
        if event.notify_sfemc:
            if self.sfemc_url is None:
                log.warning(
                    "alert %s notifies flame_sfemc but no SFEMC URL is configured", event.alert
                )
            else:
                urls.insert(0, self.sfemc_url)
        return urls

    def send(self, event: AlertEvent) -> None:
        for url in self.targets(event):
            task = asyncio.get_running_loop().create_task(self._deliver(url, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _client_for(self, url: str) -> httpx.AsyncClient:
        if url == self.sfemc_url:
            if self._client is None:
                self._client = httpx.AsyncClient(
                    timeout=self.timeout_s, trust_env=False, verify=self.verify
                )
            return self._client
        if self._webhooks is None:
            self._webhooks = httpx.AsyncClient(
                timeout=self.timeout_s,
                trust_env=False,  # no proxy from the environment: the policy sees the real peer
                follow_redirects=False,  # a redirect would lead past the policy's check
                transport=PinnedTransport(self.outbound),
            )
        return self._webhooks

    async def _deliver(self, url: str, event: AlertEvent) -> None:
        client = self._client_for(url)
        platform = url == self.sfemc_url
        # Only the SFEMC gets the platform's token; third-party webhooks must not.
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and platform else {}
        # The SFEMC takes the platform's own event; other webhooks get Kapacitor's format,
        # so that tools written for Kapacitor's alert handlers work unchanged.
        body = event.to_dict() if platform else event.to_kapacitor()
        last = ""
        for delay in (0.0, *RETRY_DELAYS_S):
            if delay:
                await asyncio.sleep(delay)
            try:
                response = await client.post(url, json=body, headers=headers)
            except WebhookRefused as exc:
                self.refused += 1
                last = exc.message
                break  # the policy will not change its mind within a few retries
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                self.delivered += 1
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            if 300 <= response.status_code < 400:
                last += " (redirects are not followed)"
                break
            if 400 <= response.status_code < 500 and response.status_code != 429:
                break  # the handler refused it; sending it again will not change its mind
        self.failed += 1
        log.warning("alert event %s (%s) not delivered to %s: %s", event.id, event.alert, url, last)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout_s * 2)
        for client in (self._client, self._webhooks):
            if client is not None:
                await client.aclose()
