"""Recording what the orchestrator puts in force in the CLMC's configuration store (CLMC-3).

Every applied template (its files, by chain), every change of what the orchestrator hands on
for a chain (its alert rules, initial and state-change policies: kind `policies`), every
undeployment and the topology it runs on go to `PUT {clmc}/v1/config/{kind}/{name}`, stamped
with the time they took effect here, not the time the CLMC got them.

Nothing is lost while the CLMC is down: each record is first written to a spool directory
(one file per record, written atomically, under the orchestrator's state directory) and
removed only once the CLMC has answered 2xx; a background thread sends what is spooled,
oldest first, every `retry_s`, and a restarted orchestrator sends what its predecessor left.
A record the CLMC refuses with a 4xx (our bug, or a revoked token) is moved to `rejected/`
with the answer, never retried blindly. The spool is bounded (`max_spooled`): past it the
oldest records are dropped and counted in the log.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from flame.common.atomicfile import atomic_write_private
from flame.topology.model import Topology
from flame.tosca.model import ServiceModel

__all__ = ["ConfigRecorder", "policies_of", "version_of"]

log = logging.getLogger(__name__)


def version_of(content: Any) -> str:
    """A version name from the content itself: the same content, the same version."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def policies_of(model: ServiceModel) -> dict[str, Any]:
    """What the orchestrator hands on for a chain: alert rules (to the CLMC), initial and
    state-change policies (to the SFEMC)."""
    doc = model.to_dict()
    return {
        "sfci": model.sfci,
        "alert_rules": doc.get("alert_rules", []),
        "initial_policies": doc.get("initial_policies", []),
        "state_change_policies": doc.get("state_change_policies", []),
    }


class ConfigRecorder:
    def __init__(
        self,
        clmc_url: str,
        token: str | None,
        spool: Path,
        *,
        retry_s: float = 2.0,
        timeout_s: float = 5.0,
        max_spooled: int = 1000,
        verify: Any = True,
    ) -> None:
        self.base = clmc_url.rstrip("/")
        self.spool = spool
        self.spool.mkdir(parents=True, exist_ok=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            timeout=timeout_s, headers=headers, trust_env=False, verify=verify
        )
        self._retry_s = retry_s
        self._max = max_spooled
        self._seq = itertools.count()
        self._lock = threading.Lock()  # one sender at a time: records go in order
        self._wake = threading.Event()
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="clmc-config-record", daemon=True)
        self._thread.start()

    # -- what is recorded -------------------------------------------------------------------

    def template(self, model: ServiceModel, tenant: str, files: Mapping[str, str]) -> None:
        content = {"sfci": model.sfci, "files": dict(sorted(files.items()))}
        now = time.time_ns()  # both took effect together
        self.record("template", model.sfc, tenant, content, time_ns=now)
        self.record("policies", model.sfc, tenant, policies_of(model), time_ns=now)

    def deleted(self, sfc: str, tenant: str) -> None:
        now = time.time_ns()
        for kind in ("template", "policies"):
            self.record(kind, sfc, tenant, None, deleted=True, time_ns=now)

    def topology(self, topology: Topology, text: str | None = None) -> None:
        content = {"source": text} if text is not None else {"name": topology.name}
        self.record("topology", topology.name, None, content)

    def record(
        self,
        kind: str,
        name: str,
        tenant: str | None,
        content: Any,
        *,
        deleted: bool = False,
        time_ns: int | None = None,
    ) -> None:
        """Spool one record now (the caller's time) and have it sent soon."""
        when = time.time_ns() if time_ns is None else time_ns
        doc = {
            "kind": kind,
            "name": name,
            "body": {
                "version": "deleted" if deleted else version_of(content),
                "time_ns": when,
                "tenant": tenant,
                "deleted": deleted,
                "content": content,
            },
        }
        path = self.spool / f"{when:020d}-{next(self._seq):06d}.json"
        try:
            atomic_write_private(path, json.dumps(doc).encode())
        except OSError as exc:
            # What was applied stays applied; only its record is missing, and the log says so.
            self.dropped += 1
            log.error("cannot spool the %s record of %s (%s): it is not recorded", kind, name, exc)
            return
        self._trim()
        self._wake.set()

    def pending(self) -> int:
        return len(self._spooled())

    # -- sending ----------------------------------------------------------------------------

    def _spooled(self) -> list[Path]:
        return sorted(p for p in self.spool.glob("*.json") if not p.name.startswith("."))

    def _trim(self) -> None:
        files = self._spooled()
        for path in files[: max(0, len(files) - self._max)]:
            path.unlink(missing_ok=True)
            self.dropped += 1
            log.error("configuration spool over %d records: dropped %s", self._max, path.name)

    def flush(self) -> bool:
        """Send what is spooled, oldest first; False if the CLMC could not take all of it."""
        with self._lock:
            for path in self._spooled():
                if not self._send(path):
                    return False
        return True

    def _send(self, path: Path) -> bool:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        except ValueError:
            log.error("unreadable configuration record %s set aside", path.name)
            self._reject(path, "unreadable")
            return True
        url = f"{self.base}/v1/config/{doc['kind']}/{doc['name']}"
        try:
            response = self._client.put(url, json=doc["body"])
        except httpx.HTTPError as exc:
            log.debug("CLMC unreachable for configuration records (%s); kept", exc)
            return False
        if response.status_code < 300:
            self.sent += 1  # before the unlink: whoever sees nothing pending sees it counted
            path.unlink(missing_ok=True)
            return True
        if response.status_code >= 500 or response.status_code in (408, 429):
            return False  # the CLMC's trouble: ask again later
        log.error(
            "CLMC refused configuration record %s/%s: HTTP %d %s",
            doc["kind"],
            doc["name"],
            response.status_code,
            response.text[:300],
        )
        self._reject(path, f"{response.status_code} {response.text[:300]}")
        return True

    def _reject(self, path: Path, why: str) -> None:
        rejected = self.spool / "rejected"
        rejected.mkdir(exist_ok=True)
        path.replace(rejected / path.name)
        (rejected / f"{path.name}.why").write_text(why + "\n")

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._retry_s)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except Exception:
                log.exception("sending configuration records failed; retrying")

    def close(self) -> None:
        """One last attempt; what the CLMC does not take stays spooled for the next start."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        self._client.close()
