"""Alert rules to the CLMC over HTTP (ORCH-8): `PUT /v1/alerts/{sfc}/{sfci}`.

A deployment must not fail because the CLMC is briefly away, and rules must not be lost when
it is: what could not be sent (no answer, 5xx, 429) is kept (latest per chain wins) and retried
in the background with a back-off, never sooner than the CLMC's ``Retry-After``, until the CLMC
takes it. The HTTP client, token header, TLS trust, error text and back-off are the common CLMC
client's (`flame.common.clmc_client`); what is specific here is the latest-per-chain queue.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from flame.common.backoff import Backoff
from flame.common.clmc_client import ClmcTarget, Verify, error_text, retry_after_s
from flame.orchestrator.alerts import AlertRulesRefused
from flame.tosca.model import AlertRule, ServiceModel

__all__ = ["HttpAlertSink"]

log = logging.getLogger(__name__)


def _rule_dicts(rules: tuple[AlertRule, ...]) -> list[dict[str, Any]]:
    model = ServiceModel("", "", "", (), (), (), (), rules)
    dicts: list[dict[str, Any]] = model.to_dict()["alert_rules"]
    return dicts


class HttpAlertSink:
    def __init__(
        self,
        clmc_url: str,
        token: str | None,
        *,
        retry_s: float = 2.0,
        timeout_s: float = 3.0,
        verify: Verify = True,  # the platform CA for an https CLMC
    ) -> None:
        target = ClmcTarget(clmc_url, token=token, verify=verify, timeout_s=timeout_s)
        self.base = target.base
        self._client = target.sync_client()
        self._pending: dict[str, tuple[str, Any]] = {}  # sfc -> ("put", body) | ("delete", sfci)
        self._instances: dict[str, str] = {}  # sfc -> the sfci its rules were set for
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        # Doubling from `retry_s` up to ten times it: a CLMC back after a long outage is
        # found within that, not after an ever longer wait.
        self._backoff = Backoff(retry_s, min(30.0, retry_s * 10))
        self._not_before = 0.0  # monotonic: a Retry-After asks for at least this long
        self._thread = threading.Thread(
            target=self._retry_loop, name="clmc-alert-sink", daemon=True
        )
        self._thread.start()

    def set_rules(
        self, sfc: str, tenant: str, rules: tuple[AlertRule, ...], sfci: str = ""
    ) -> None:
        instance = sfci or sfc
        previous = self._instances.get(sfc)
        if previous is not None and previous != instance:
            self._submit(sfc, ("delete", previous))  # a new instance replaces the old one's
        self._instances[sfc] = instance
        body = {"tenant": tenant, "rules": _rule_dicts(rules), "sfci": instance}
        self._submit(sfc, ("put", body))

    def remove_rules(self, sfc: str, sfci: str = "") -> None:
        self._submit(sfc, ("delete", sfci or self._instances.pop(sfc, sfc)))

    def _submit(self, sfc: str, op: tuple[str, Any]) -> None:
        with self._lock:
            self._pending[sfc] = op
        if not self._send(sfc, op, caller_waits=True):
            self._wake.set()

    def _send(self, sfc: str, op: tuple[str, Any], *, caller_waits: bool = False) -> bool:
        kind, arg = op
        try:
            if kind == "put":
                url = f"{self.base}/v1/alerts/{sfc}/{arg['sfci']}"
                response = self._client.put(
                    url, json={"tenant": arg["tenant"], "rules": arg["rules"]}
                )
                ok = response.status_code < 300
            else:
                response = self._client.delete(f"{self.base}/v1/alerts/{sfc}/{arg}")
                ok = response.status_code < 300 or response.status_code == 404
        except httpx.HTTPError as exc:
            log.warning("CLMC unreachable for the alert rules of %s (%s); will retry", sfc, exc)
            return False
        if response.status_code == 429 or response.status_code >= 500:
            wait = retry_after_s(response)
            if wait is not None:
                self._not_before = max(self._not_before, time.monotonic() + min(wait, 300.0))
            log.warning(
                "CLMC busy or failing for the alert rules of %s (HTTP %d %s); will retry",
                sfc,
                response.status_code,
                error_text(response),
            )
            return False
        with self._lock:
            if self._pending.get(sfc) is op:
                del self._pending[sfc]
        if not ok:
            # A 4xx is the template's problem (a webhook the CLMC may not call), our bug or a
            # token problem: retrying the same body will not fix it. The deploying user is told.
            message = error_text(response)
            if caller_waits and response.status_code == 400:
                raise AlertRulesRefused(
                    f"the CLMC refused the alert rules of '{sfc}': {message}", sfc=sfc
                )
            log.error(
                "CLMC refused the alert rules of %s: HTTP %d %s",
                sfc,
                response.status_code,
                message,
            )
        return True

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)

    def _retry_loop(self) -> None:
        delay = self._backoff.next_delay
        while not self._closed:
            self._wake.wait(delay)
            self._wake.clear()
            # A Retry-After holds even a wake-up by a new submission (which was tried at once).
            while (hold := self._not_before - time.monotonic()) > 0 and not self._closed:
                self._wake.wait(hold)
                self._wake.clear()
            with self._lock:
                items = list(self._pending.items())
            if not items:
                self._backoff.reset()
                delay = self._backoff.next_delay
                continue
            ok = True
            for sfc, op in items:
                if self._closed:
                    return
                ok = self._send(sfc, op) and ok
            if ok:
                self._backoff.reset()
            delay = self._backoff.next_delay if ok else self._backoff.failure()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._client.close()
