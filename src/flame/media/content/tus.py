"""Resumable uploads: the tus protocol 1.0.0 (https://tus.io/protocols/resumable-upload).

Extensions: creation, creation-with-upload, termination, checksum (sha1, sha256, md5) and
expiration; not creation-defer-length or concatenation. The HTTP layer (`app`) maps headers
to the calls below and `ContentError`s to statuses; this module holds the state machine.

An upload is a row in the catalog's database (declared length, bytes received, its metadata,
state ``receiving`` -> ``complete`` -> ``done``) and a file in the staging directory. The row's
``received`` is the truth: a PATCH first truncates the file to it, so bytes written by a
request that died before its offset was recorded are never served. A PATCH holds the
upload's lock for its whole body; a second one on the same upload meanwhile gets 423 at once
(it would otherwise race on the offset). A body is written in batches of at most 1 MiB: the
memory a PATCH holds does not depend on its size. The SHA-256 of the whole upload is computed
as it arrives (kept in memory between PATCHes; recomputed from the file after a restart).

Metadata keys understood (``Upload-Metadata``, values base64): ``filename`` or ``name``,
``filetype`` or ``type``, ``synopsis``, ``tags`` (comma separated), ``reference`` (the source
asset's id), ``duration_s``, ``description`` (a JSON object: the whole description) and
``sha256`` (hex digest of the whole content, verified at the end).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flame.common.auth import Principal
from flame.media.content.catalog import new_id
from flame.media.content.db import Tx
from flame.media.content.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    Gone,
    Locked,
    NotFound,
    StorageUnavailable,
    TooLarge,
)
from flame.media.content.ingest import (
    Ingest,
    check_content_type,
    check_name,
    check_sha256,
    remove_quietly,
    sha256_file,
)

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "EXTENSIONS",
    "TUS_VERSION",
    "Upload",
    "Uploads",
    "parse_checksum",
    "parse_metadata",
]

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
_WRITE_BATCH = 1024 * 1024
_MAX_METADATA = 16 * 1024


@dataclass
class Upload:
    id: str
    tenant: str
    owner: str
    length: int
    received: int
    metadata: str  # the Upload-Metadata header as the client sent it
    description: dict[str, Any]
    content_type: str
    sha256_expected: str | None
    state: str  # receiving | complete | done
    created_at: float
    updated_at: float
    expires_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Upload:
        desc = row["description"]
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            owner=row["owner"],
            length=int(row["length"]),
            received=int(row["received"]),
            metadata=row["metadata"],
            description=json.loads(desc) if isinstance(desc, str) else desc,
            content_type=row["content_type"],
            sha256_expected=row["sha256_expected"],
            state=row["state"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            expires_at=float(row["expires_at"]),
        )


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """``key base64value, key2, ...`` (tus 1.0.0 Upload-Metadata): keys unique, non-empty,
    without spaces or commas; values base64 (standard alphabet) and optional."""
    if header is None or not header.strip():
        return {}
    if len(header) > _MAX_METADATA:
        raise BadRequest(f"Upload-Metadata is over {_MAX_METADATA} bytes", code="invalid_metadata")
    out: dict[str, str | None] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if not parts[0] or len(parts) > 2:
            raise BadRequest(f"Upload-Metadata pair {pair.strip()!r} is not 'key base64value'",
                             code="invalid_metadata")  # fmt: skip
        key = parts[0]
        if key in out:
            raise BadRequest(f"Upload-Metadata repeats the key {key!r}", code="invalid_metadata")
        if len(parts) == 1:
            out[key] = None
            continue
        try:
            raw = base64.b64decode(parts[1], validate=True)
            out[key] = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text",
                code="invalid_metadata",
            ) from None
    return out


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; 400 for an unknown algorithm."""
    if header is None:
        return None
    alg, _, value = header.strip().partition(" ")
    alg = alg.lower()
    if alg not in CHECKSUM_ALGORITHMS:
        raise BadRequest(
            f"checksum algorithm {alg!r} is not supported; use one of "
            f"{', '.join(CHECKSUM_ALGORITHMS)}",
            code="unsupported_checksum",
        )
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "Upload-Checksum's digest is not base64", code="invalid_checksum"
        ) from None
    if len(digest) != hashlib.new(alg).digest_size:
        raise BadRequest(f"a {alg} digest is {hashlib.new(alg).digest_size} bytes",
                         code="invalid_checksum")  # fmt: skip
    return alg, digest


def description_from(meta: dict[str, str | None]) -> dict[str, Any]:
    raw = meta.get("description")
    doc: dict[str, Any] = {}
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"metadata 'description' is not JSON: {exc}",
                             code="invalid_metadata") from None  # fmt: skip
        if not isinstance(parsed, dict):
            raise BadRequest(
                "metadata 'description' must be a JSON object", code="invalid_metadata"
            )
        doc.update(parsed)
    name = meta.get("name") or meta.get("filename") or doc.get("name")
    if not name or not isinstance(name, str):
        raise BadRequest(
            "the upload needs a name: Upload-Metadata 'filename' (or 'name')",
            code="invalid_metadata",
        )
    doc["name"] = check_name(name)
    if meta.get("synopsis"):
        doc["synopsis"] = meta["synopsis"]
    if meta.get("tags"):
        doc["tags"] = [t.strip() for t in str(meta["tags"]).split(",") if t.strip()]
    if meta.get("reference"):
        doc["reference"] = meta["reference"]
    if meta.get("duration_s"):
        try:
            doc["duration_s"] = float(str(meta["duration_s"]))
        except ValueError:
            raise BadRequest(
                "metadata 'duration_s' is not a number", code="invalid_metadata"
            ) from None
    return doc


def _open_at(path: Path, offset: int) -> BinaryIO:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fh = os.fdopen(fd, "r+b")
    fh.truncate(offset)  # bytes past the recorded offset were never acknowledged
    fh.seek(offset)
    return fh


class Uploads:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.db = ingest.catalog.db
        self.locks: dict[str, asyncio.Lock] = {}
        self._hashers: dict[str, tuple[int, Any]] = {}  # id -> (offset, sha256 so far)
        self._started: dict[str, float] = {}

    # -- create / read / delete --------------------------------------------------------------

    async def create(
        self, principal: Principal, *, length_header: str | None, metadata_header: str | None
    ) -> Upload:
        if length_header is None:
            raise BadRequest(
                "Upload-Length is required (creation-defer-length is not supported)",
                code="missing_upload_length",
            )
        length = _non_negative(length_header, "Upload-Length")
        if length > self.ingest.limits.max_upload:
            raise TooLarge(
                f"Upload-Length {length} exceeds Tus-Max-Size {self.ingest.limits.max_upload}",
                code="upload_too_large",
                limit=self.ingest.limits.max_upload,
            )
        meta = parse_metadata(metadata_header)
        description = await self.ingest.catalog.validate(_tenant(principal), description_from(meta))
        content_type = check_content_type(
            meta.get("filetype") or meta.get("type"), description["name"]
        )
        expected = check_sha256(meta.get("sha256"))
        tenant = _tenant(principal)
        now = time.time()
        upload = Upload(
            id=new_id(),
            tenant=tenant,
            owner=principal.name,
            length=length,
            received=0,
            metadata=metadata_header or "",
            description=description,
            content_type=content_type,
            sha256_expected=expected,
            state="receiving",
            created_at=now,
            updated_at=now,
            expires_at=now + self.ingest.limits.upload_ttl_s,
        )
        async with self.ingest.quota_lock:
            await self.ingest.reserve(tenant, length)
            await self.db.execute(
                "INSERT INTO uploads (id, tenant, owner, length, received, metadata, description, "
                "content_type, sha256_expected, state, created_at, updated_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    upload.id, tenant, upload.owner, length, 0, upload.metadata,
                    json.dumps(description), content_type, expected, "receiving", now, now,
                    upload.expires_at,
                ),
            )  # fmt: skip
        staged = self.ingest.staged(upload.id)
        await asyncio.to_thread(lambda: _open_at(staged, 0).close())
        self._hashers[upload.id] = (0, hashlib.sha256())
        self._started[upload.id] = time.monotonic()
        return upload

    async def get(self, tenant: str, upload_id: str) -> Upload:
        rows = await self.db.query(
            "SELECT * FROM uploads WHERE id = ? AND tenant = ?", (upload_id, tenant)
        )
        if not rows:
            raise NotFound(f"no upload {upload_id!r}", code="upload_not_found")
        upload = Upload.from_row(rows[0])
        if upload.state != "done" and upload.expires_at < time.time():
            await self._drop(upload)
            raise Gone(f"upload {upload_id!r} expired; start a new one", code="upload_expired")
        return upload

    async def head(self, tenant: str, upload_id: str) -> Upload:
        upload = await self.get(tenant, upload_id)
        if upload.state == "complete":
            # A completed upload whose storage step failed: try again now.
            await self._finish(upload)
            upload = await self.get(tenant, upload_id)
        return upload

    async def terminate(self, tenant: str, upload_id: str) -> None:
        upload = await self.get(tenant, upload_id)
        lock = self.locks.setdefault(upload_id, asyncio.Lock())
        if lock.locked():
            raise Locked(f"upload {upload_id!r} is receiving a PATCH", code="upload_locked")
        async with lock:
            await self._drop(upload)

    async def _drop(self, upload: Upload) -> None:
        await self.db.execute("DELETE FROM uploads WHERE id = ?", (upload.id,))
        await asyncio.to_thread(remove_quietly, self.ingest.staged(upload.id))
        self._hashers.pop(upload.id, None)
        self._started.pop(upload.id, None)
        self.locks.pop(upload.id, None)

    async def expire(self) -> int:
        """Forget uploads idle past their expiry (their reservations with them)."""
        rows = await self.db.query("SELECT * FROM uploads WHERE expires_at < ? ", (time.time(),))
        n = 0
        for row in rows:
            upload = Upload.from_row(row)
            lock = self.locks.get(upload.id)
            if lock is not None and lock.locked():
                continue
            if upload.state == "done":
                await self.db.execute("DELETE FROM uploads WHERE id = ?", (upload.id,))
            else:
                await self._drop(upload)
                n += 1
        return n

    # -- PATCH -------------------------------------------------------------------------------

    async def patch(
        self,
        tenant: str,
        upload_id: str,
        *,
        offset_header: str | None,
        content_length: int | None,
        checksum: tuple[str, bytes] | None,
        body: AsyncIterator[bytes],
    ) -> tuple[Upload, dict[str, Any] | None]:
        """Append the body at the client's offset; (the upload, the asset once complete)."""
        if offset_header is None:
            raise BadRequest("Upload-Offset is required", code="missing_upload_offset")
        offset = _non_negative(offset_header, "Upload-Offset")
        upload = await self.get(tenant, upload_id)
        lock = self.locks.setdefault(upload_id, asyncio.Lock())
        if lock.locked():
            raise Locked(
                f"upload {upload_id!r} is receiving another PATCH; retry once it ends",
                code="upload_locked",
            )
        async with lock:
            upload = await self.get(tenant, upload_id)  # re-read under the lock
            if upload.state != "receiving":
                if offset == upload.received and content_length in (None, 0):
                    if upload.state == "complete":
                        return await self._finish(upload)
                    return upload, await self._asset(upload)
                raise Conflict(
                    f"upload {upload_id!r} is complete ({upload.length} bytes)",
                    code="upload_complete",
                    offset=upload.received,
                )
            if offset != upload.received:
                raise Conflict(
                    f"Upload-Offset {offset} does not match the upload's offset "
                    f"{upload.received}; HEAD it and resume from there",
                    code="offset_mismatch",
                    offset=upload.received,
                )
            if content_length is not None and offset + content_length > upload.length:
                raise TooLarge(
                    f"the PATCH body ({content_length} bytes at {offset}) would pass "
                    f"Upload-Length {upload.length}",
                    code="exceeds_upload_length",
                )
            received = await self._receive(upload, body, checksum)
            upload = await self._advance(upload, received)
            if upload.received == upload.length:
                return await self._finish(upload)
            return upload, None

    async def _receive(
        self, upload: Upload, body: AsyncIterator[bytes], checksum: tuple[str, bytes] | None
    ) -> int:
        """Write the body after `upload.received`; returns the bytes kept."""
        path = self.ingest.staged(upload.id)
        try:
            fh = await asyncio.to_thread(_open_at, path, upload.received)
        except OSError as exc:
            raise StorageUnavailable(f"cannot open the staged upload: {exc.strerror}") from None
        cached = self._hashers.get(upload.id)
        whole = cached[1] if cached is not None and cached[0] == upload.received else None
        before = whole.copy() if whole is not None else None
        piece = hashlib.new(checksum[0]) if checksum else None
        room = upload.length - upload.received
        written = 0
        buf = bytearray()
        failure: BaseException | None = None
        try:
            async for chunk in body:
                if written + len(buf) + len(chunk) > room:
                    raise TooLarge(
                        f"the PATCH body passes Upload-Length {upload.length}",
                        code="exceeds_upload_length",
                    )
                buf += chunk
                if piece is not None:
                    piece.update(chunk)
                if len(buf) >= _WRITE_BATCH:
                    data = bytes(buf)
                    buf.clear()
                    await asyncio.to_thread(fh.write, data)
                    written += len(data)
                    if whole is not None:
                        whole.update(data)
        except Exception as exc:  # a client gone (ClientDisconnect), too slow (408), too long
            failure = exc
        try:
            keep = failure is None or (checksum is None and not isinstance(failure, TooLarge))
            if keep and buf:
                data = bytes(buf)
                await asyncio.to_thread(fh.write, data)
                written += len(data)
                if whole is not None:
                    whole.update(data)
            mismatch = piece is not None and checksum is not None and piece.digest() != checksum[1]
            if failure is None and mismatch and checksum is not None:
                keep = False
                failure = ChecksumMismatch(
                    f"the {checksum[0]} of the PATCH body does not match Upload-Checksum; "
                    "the chunk was discarded",
                    code="checksum_mismatch",
                    offset=upload.received,
                )
            if not keep:
                await asyncio.to_thread(fh.truncate, upload.received)
                written = 0
                whole = before
            await asyncio.to_thread(fh.flush)
        except OSError as exc:
            await asyncio.to_thread(_truncate_quietly, fh, upload.received)
            self._hashers.pop(upload.id, None)
            raise StorageUnavailable(f"cannot write the upload: {exc.strerror}") from None
        finally:
            await asyncio.to_thread(fh.close)
        if whole is not None:
            self._hashers[upload.id] = (upload.received + written, whole)
        else:
            self._hashers.pop(upload.id, None)
        if failure is not None:
            if written:
                await self._advance(upload, written)
            raise failure
        return written

    async def _advance(self, upload: Upload, written: int) -> Upload:
        now = time.time()
        new = upload.received + written
        state = "complete" if new == upload.length else "receiving"
        expires = now + self.ingest.limits.upload_ttl_s

        def cas(tx: Tx) -> int:
            return tx.execute(
                "UPDATE uploads SET received = ?, state = ?, updated_at = ?, expires_at = ? "
                "WHERE id = ? AND received = ?",
                (new, state, now, expires, upload.id, upload.received),
            )

        if await self.db.transaction(cas) != 1:  # pragma: no cover - the lock prevents it
            raise Conflict("the upload moved meanwhile; HEAD it", code="offset_mismatch")
        upload.received, upload.state, upload.updated_at, upload.expires_at = (
            new,
            state,
            now,
            expires,
        )
        return upload

    async def _finish(self, upload: Upload) -> tuple[Upload, dict[str, Any]]:
        path = self.ingest.staged(upload.id)
        cached = self._hashers.get(upload.id)
        if cached is not None and cached[0] == upload.length:
            sha256 = cached[1].hexdigest()
        else:
            sha256 = await asyncio.to_thread(sha256_file, path)
        try:
            asset = await self.ingest.finish(
                asset_id=upload.id,
                tenant=upload.tenant,
                owner=upload.owner,
                path=path,
                description=upload.description,
                content_type=upload.content_type,
                sha256=sha256,
                expected_sha256=upload.sha256_expected,
                method="tus",
                started=self._started.get(
                    upload.id, time.monotonic() - (time.time() - upload.created_at)
                ),
            )
        except ChecksumMismatch:
            await self._drop(upload)
            raise
        await self.db.execute(
            "UPDATE uploads SET state = 'done', updated_at = ? WHERE id = ?",
            (time.time(), upload.id),
        )
        upload.state = "done"
        self._hashers.pop(upload.id, None)
        self._started.pop(upload.id, None)
        return upload, asset

    async def _asset(self, upload: Upload) -> dict[str, Any] | None:
        with contextlib.suppress(NotFound):
            return await self.ingest.catalog.get(upload.tenant, upload.id)
        return None


def _truncate_quietly(fh: BinaryIO, size: int) -> None:
    with contextlib.suppress(OSError):
        fh.truncate(size)


def _non_negative(value: str, header: str) -> int:
    value = value.strip()
    if not value.isdigit() or len(value) > 19:
        raise BadRequest(f"{header} must be a non-negative integer, not {value[:40]!r}",
                         code="invalid_header")  # fmt: skip
    return int(value)


def _tenant(principal: Principal) -> str:
    assert principal.tenant is not None, "the content API serves tenant principals only"
    return principal.tenant
