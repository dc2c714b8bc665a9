"""The configuration store over HTTP (CLMC-3): what was in force, and when.

    PUT /v1/config/{kind}/{name}          record a version (operator: the orchestrator)
    GET /v1/config/{kind}/{name}?at=T     the version in force at T (default: now)
    GET /v1/config/{kind}/{name}/history  every version, oldest first (?bodies=false: no content)

Kinds: `template` (a chain's FLAME-TOSCA files, by sfc), `policies` (what the orchestrator hands
on for a chain: its alert rules to the CLMC, its initial and state-change policies to the
SFEMC, by sfc) and `topology` (the infrastructure topology the orchestrator runs on, by name).
A version is `{"version", "time_ns", "tenant", "content"}`; a version with `"deleted": true`
says the item stopped being in force then (an undeployed chain).

Who may read: the operator everything; a tenant only versions recorded for its own tenant id
(a chain name another tenant used before is not visible to it), never topologies. What is
not the caller's answers as if it did not exist (404). Errors are `{"error": ...}` as on the
CLMC's other routes. Recording is idempotent: the version already in force at `time_ns` with
the same content is not recorded again (a retried PUT changes nothing).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flame.clmc.store.base import ConfigVersion, Store
from flame.common.access import OperatorOnly, TenantOrOperator
from flame.common.auth import Principal, Role

__all__ = ["KINDS", "decode_version", "install_config_routes", "parse_time"]

KINDS = frozenset({"template", "policies", "topology"})
TENANT_KINDS = frozenset({"template", "policies"})  # topologies are the platform's
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_VERSION = re.compile(r"^[\x21-\x7e]{1,200}$")
MAX_BODY_BYTES = 8 * 1024 * 1024  # templates are up to 4 MB at the orchestrator
_MAX_NS = 2**63 - 1


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_time(text: str | None) -> int:
    """`at`: RFC 3339 (`2026-12-06T05:00:00Z`) or integer epoch nanoseconds; None: now."""
    if text is None or text == "":
        return time.time_ns()
    if re.fullmatch(r"-?[0-9]{1,19}", text):
        value = int(text)
        if 0 <= value <= _MAX_NS:
            return value
        raise _Refused(400, f"'at' out of range: {text!r}")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(
            400, f"'at' must be RFC 3339 (2026-12-06T05:00:00Z) or epoch nanoseconds: {text[:60]!r}"
        ) from None
    if when.tzinfo is None:
        raise _Refused(400, "'at' needs a time zone (e.g. a trailing Z for UTC)")
    ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if not 0 <= ns <= _MAX_NS:
        raise _Refused(400, f"'at' out of range (1970 to 2262): {text[:60]!r}")
    return ns


def decode_version(version: ConfigVersion) -> dict[str, Any]:
    """A stored version as the API answers it (the body holds the tenant and the content)."""
    try:
        envelope = json.loads(version.body)
    except ValueError:
        envelope = {"content": version.body}
    if not isinstance(envelope, dict):
        envelope = {"content": envelope}
    return {
        "kind": version.kind,
        "name": version.name,
        "version": version.version,
        "time_ns": version.time_ns,
        "time": _rfc3339(version.time_ns),
        "tenant": envelope.get("tenant"),
        "deleted": bool(envelope.get("deleted", False)),
        "content": envelope.get("content"),
    }


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


def _check_target(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise _Refused(404, f"no configuration kind {kind!r} (kinds: {', '.join(sorted(KINDS))})")
    if not _NAME.match(name):
        raise _Refused(400, "a configuration item's name holds letters, digits, '.', '_', '-'")


def _visible(caller: Principal, kind: str, item: dict[str, Any]) -> bool:
    if caller.role is Role.OPERATOR:
        return True
    return kind in TENANT_KINDS and item["tenant"] == caller.tenant


async def _read_limited(request: Request) -> bytes:
    """The body, refused (413) as soon as it is over the limit: never all of a huge one."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"the body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_put(raw: bytes) -> tuple[str, int, str | None, bool, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Refused(400, f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict) or not set(body) <= {
        "version",
        "time_ns",
        "tenant",
        "deleted",
        "content",
    }:
        raise _Refused(
            400,
            'send {"version": V, "time_ns": N, "tenant": T, "content": ...} (or "deleted": true)',
        )
    version = body.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise _Refused(400, "'version' must be 1-200 printable ASCII characters, no spaces")
    when = body.get("time_ns", time.time_ns())
    if isinstance(when, bool) or not isinstance(when, int) or not 0 <= when <= _MAX_NS:
        raise _Refused(400, "'time_ns' must be epoch nanoseconds (a non-negative integer)")
    tenant = body.get("tenant")
    if tenant is not None and not (isinstance(tenant, str) and _NAME.match(tenant)):
        raise _Refused(400, "'tenant' must be a tenant id")
    deleted = body.get("deleted", False)
    if not isinstance(deleted, bool):
        raise _Refused(400, "'deleted' must be true or false")
    return version, when, tenant, deleted, body.get("content")


def install_config_routes(app: FastAPI, store: Any) -> None:
    """Add the configuration routes to the CLMC app; `store` gives the current `Store` (a
    function, since the store is opened when the app's lifespan starts)."""

    def current() -> Store:
        got: Store = store()
        return got

    def answer(exc: _Refused) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.put("/v1/config/{kind}/{name}")
    async def put_config(
        kind: str, name: str, request: Request, caller: OperatorOnly
    ) -> JSONResponse:
        try:
            _check_target(kind, name)
            version, when, tenant, deleted, content = _parse_put(await _read_limited(request))
            if kind in TENANT_KINDS and tenant is None:
                raise _Refused(400, f"'tenant' is required for a {kind}: the chain's owner")
        except _Refused as exc:
            return answer(exc)
        envelope = {"tenant": tenant, "deleted": deleted, "content": content}
        text = json.dumps(envelope, sort_keys=True, separators=(",", ":"))

        def record() -> bool:
            now = current().config_at(kind, name, when)
            if now is not None and now.version == version and now.body == text:
                return False  # a retry, or nothing changed
            current().put_config(kind, name, version, text, when)
            return True

        recorded = await anyio.to_thread.run_sync(record)
        return JSONResponse(
            {"kind": kind, "name": name, "version": version, "recorded": recorded},
            status_code=201 if recorded else 200,
        )

    @app.get("/v1/config/{kind}/{name}")
    async def config_at(
        kind: str, name: str, caller: TenantOrOperator, at: str | None = None
    ) -> JSONResponse:
        try:
            _check_target(kind, name)
            when = parse_time(at)
        except _Refused as exc:
            return answer(exc)
        found = await anyio.to_thread.run_sync(current().config_at, kind, name, when)
        item = None if found is None else decode_version(found)
        if item is None or not _visible(caller, kind, item):
            return answer(_Refused(404, f"no {kind} {name!r} in force at {_rfc3339(when)}"))
        return JSONResponse({**item, "at": _rfc3339(when)})

    @app.get("/v1/config/{kind}/{name}/history")
    async def config_history(
        kind: str, name: str, caller: TenantOrOperator, bodies: bool = True
    ) -> JSONResponse:
        try:
            _check_target(kind, name)
        except _Refused as exc:
            return answer(exc)
        found = await anyio.to_thread.run_sync(current().config_history, kind, name)
        items = [decode_version(v) for v in found]
        mine = [i for i in items if _visible(caller, kind, i)]
        if not mine:
            return answer(_Refused(404, f"no {kind} {name!r} recorded"))
        if not bodies:
            for item in mine:
                item.pop("content")
        return JSONResponse({"kind": kind, "name": name, "versions": mine})
