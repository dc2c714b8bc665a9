"""Alert rules to the CLMC over HTTP (ORCH-8): `PUT /v1/alerts/{sfc}/{sfci}`.

A deployment must not fail because the CLMC is briefly away, and rules must not be lost when
it is: what could not be sent is kept (latest per chain wins) and retried in the background
until the CLMC takes it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

import httpx

from flame.orchestrator.alerts import AlertRulesRefused
from flame.tosca.model import AlertRule, ServiceModel

__all__ = ["HttpAlertSink"]

log = logging.getLogger(__name__)


def _rule_dicts(rules: tuple[AlertRule, ...]) -> list[dict[str, Any]]:
    model = ServiceModel("", "", "", (), (), (), (), rules)
    dicts: list[dict[str, Any]] = model.to_dict()["alert_rules"]
    return dicts


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:300]


class HttpAlertSink:
    def __init__(
        self,
        clmc_url: str,
        token: str | None,
        *,
        retry_s: float = 2.0,
        timeout_s: float = 3.0,
        verify: ssl.SSLContext | bool = True,  # the platform CA for an https CLMC
    ) -> None:
        self.base = clmc_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            timeout=timeout_s, headers=headers, trust_env=False, verify=verify
        )
        self._pending: dict[str, tuple[str, Any]] = {}  # sfc -> ("put", body) | ("delete", sfci)
        self._instances: dict[str, str] = {}  # sfc -> the sfci its rules were set for
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._retry_s = retry_s
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
        with self._lock:
            if self._pending.get(sfc) is op:
                del self._pending[sfc]
        if not ok:
            # A 4xx is the template's problem (a webhook the CLMC may not call), our bug or a
            # token problem: retrying the same body will not fix it. The deploying user is told.
            message = _error_text(response)
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
        while not self._closed:
            self._wake.wait(self._retry_s)
            self._wake.clear()
            with self._lock:
                items = list(self._pending.items())
            for sfc, op in items:
                if self._closed:
                    return
                self._send(sfc, op)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._client.close()
