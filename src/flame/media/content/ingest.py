"""What every way in shares: limits, quotas, and turning a finished local file into an asset.

A finished upload (tus or multipart) is a file in the staging directory whose SHA-256 is known.
`Ingest.finish` checks it against the checksum the client announced, moves it into the
`BlobStore`, records the asset in the catalog and calls the completion hooks (the analysis
queue, the CLMC). Quota is per tenant: bytes stored plus the whole declared length of every
open upload, so concurrent uploads cannot together exceed it (checked and reserved in one
transaction of this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect

from flame.media.content.catalog import Catalog
from flame.media.content.errors import BadRequest, ChecksumMismatch, RequestTimeout, TooLarge
from flame.media.content.storage import BlobStore

__all__ = ["Ingest", "Limits", "check_name", "guarded_body"]

log = logging.getLogger(__name__)

_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-f]{64}")

Hook = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


@dataclass
class Limits:
    max_upload: int = 50 * 1024**3  # bytes, one asset (tus Tus-Max-Size)
    max_multipart: int = 64 * 1024**2  # bytes, one multipart request
    quota: int = 100 * 1024**3  # bytes per tenant
    quotas: dict[str, int] = field(default_factory=dict)  # tenant -> bytes
    upload_ttl_s: float = 24 * 3600.0  # an idle unfinished upload expires after this
    body_idle_s: float = 30.0  # no byte of a body for this long: 408
    body_min_rate: float = 4096.0  # bytes/s a body must average ...
    body_grace_s: float = 10.0  # ... once it has been sending for this long

    def quota_of(self, tenant: str) -> int:
        return self.quotas.get(tenant, self.quota)


def check_name(name: str) -> str:
    """An asset name is a label, never a path: no separators, dot segments or control chars."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise BadRequest("the asset name is empty", code="invalid_name")
    if len(name) > 200:
        raise BadRequest("the asset name is over 200 characters", code="invalid_name")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise BadRequest(
            f"the asset name {name!r} looks like a path; give a plain file name",
            code="invalid_name",
        )
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise BadRequest("the asset name has control characters", code="invalid_name")
    return name


def check_content_type(value: str | None, name: str) -> str:
    if value:
        value = value.split(";")[0].strip().lower()
        if not _TYPE.fullmatch(value):
            raise BadRequest(f"content type {value!r} is not type/subtype", code="invalid_type")
        return value
    import mimetypes  # noqa: PLC0415

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not _SHA256.fullmatch(value):
        raise BadRequest("sha256 must be 64 hex digits", code="invalid_checksum")
    return value


async def guarded_body(
    stream: AsyncIterator[bytes], limits: Limits, *, what: str = "the body"
) -> AsyncIterator[bytes]:
    """`stream` with slow-client protection: 408 when no byte comes for `body_idle_s`, or when
    the average rate stays under `body_min_rate` after `body_grace_s` (a trickle of one byte
    now and then holds a connection and a lock forever otherwise)."""
    it = stream.__aiter__()
    started = time.monotonic()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), limits.body_idle_s)
        except StopAsyncIteration:
            return
        except ClientDisconnect:  # the bytes before it are kept; a 4xx, not a logged 500
            raise BadRequest(
                f"the client went away during {what}; resume from the offset the server reports",
                code="client_disconnected",
            ) from None
        except TimeoutError:
            raise RequestTimeout(
                f"no byte of {what} for {limits.body_idle_s:g} s; resume from the offset "
                "the server reports",
                code="body_timeout",
            ) from None
        received += len(chunk)
        elapsed = time.monotonic() - started
        if elapsed > limits.body_grace_s and received / elapsed < limits.body_min_rate:
            raise RequestTimeout(
                f"{what} arrives at {received / elapsed:.0f} B/s, under the minimum "
                f"{limits.body_min_rate:g} B/s",
                code="body_too_slow",
            )
        if chunk:
            yield chunk


class Ingest:
    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        staging: Path,
        limits: Limits,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.staging = staging
        self.limits = limits
        self.hooks: list[Hook] = []
        staging.mkdir(parents=True, exist_ok=True)
        self.quota_lock = asyncio.Lock()  # held from the quota check to the reservation

    def staged(self, upload_id: str) -> Path:
        return self.staging / f"{upload_id}.part"

    async def reserve(self, tenant: str, length: int) -> None:
        """Refuse an upload of `length` bytes past the size limit or the tenant's quota."""
        if length > self.limits.max_upload:
            raise TooLarge(
                f"the upload is {length} bytes; the limit is {self.limits.max_upload}",
                code="upload_too_large",
                limit=self.limits.max_upload,
            )
        usage = await self.catalog.usage(tenant)
        quota = self.limits.quota_of(tenant)
        used = usage["stored_bytes"] + usage["reserved_bytes"]
        if used + length > quota:
            raise TooLarge(
                f"tenant {tenant!r} would exceed its quota: {used} bytes used or reserved + "
                f"{length} > {quota}",
                code="quota_exceeded",
                used=used,
                quota=quota,
            )

    async def finish(
        self,
        *,
        asset_id: str,
        tenant: str,
        owner: str,
        path: Path,
        description: dict[str, Any],
        content_type: str,
        sha256: str,
        expected_sha256: str | None,
        method: str,
        started: float,
    ) -> dict[str, Any]:
        if expected_sha256 is not None and expected_sha256 != sha256:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise ChecksumMismatch(
                f"the content's SHA-256 is {sha256}, not the {expected_sha256} announced; "
                "the upload is discarded",
                code="checksum_mismatch",
                sha256=sha256,
            )
        size = path.stat().st_size
        key = f"{tenant}/{asset_id}"
        await self.store.put_file(key, path, content_type=content_type, sha256=sha256)
        asset = await self.catalog.create_asset(
            asset_id=asset_id,
            tenant=tenant,
            owner=owner,
            description=description,
            content_type=content_type,
            size=size,
            sha256=sha256,
            storage_key=key,
            status="stored",
        )
        elapsed = max(1e-6, time.monotonic() - started)
        event = {"method": method, "bytes": size, "seconds": elapsed, "tenant": tenant}
        log.info(
            "ingested %s (%d bytes, %s) for %s in %.2f s", asset_id, size, method, tenant, elapsed
        )
        for hook in self.hooks:
            try:
                await hook(asset, event)
            except Exception:
                log.exception("an ingest hook failed for %s", asset_id)
        return await self.catalog.get(tenant, asset_id)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while True:
            data = fh.read(1024 * 1024)
            if not data:
                return h.hexdigest()
            h.update(data)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
