"""Where finished assets live, behind one small interface: the filesystem (default) or S3.

`BlobStore` knows keys (``<tenant>/<asset id>``, both generated and checked here, never a
client's file name), bytes and sizes; what the bytes mean is the catalog's business. Uploads
in progress are not here: the tus layer stages them in a local file and hands the finished
file to `put_file`, which the filesystem store renames into place and the S3 store sends with
boto3's managed transfer (multipart above 8 MiB, bounded memory). Reads stream a byte range in
chunks, so serving a large object never holds it in memory.

boto3 is synchronous: every S3 call runs in a worker thread (`asyncio.to_thread`), never on
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flame.common.errors import ConfigError
from flame.media.content.errors import StorageUnavailable

__all__ = ["BlobInfo", "BlobStore", "FileStore", "S3Store", "check_key", "open_store"]

CHUNK = 256 * 1024
_KEY = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})/[A-Za-z0-9_-]{1,64}")


def check_key(key: str) -> str:
    """A storage key is ``<tenant>/<id>``: no client-chosen text, so no traversal."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


class BlobStore(Protocol):
    kind: str

    async def put_file(self, key: str, path: Path, *, content_type: str, sha256: str) -> BlobInfo:
        """Store the finished file at `path` under `key` (the file is consumed)."""
        ...

    async def stat(self, key: str) -> BlobInfo | None: ...

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start`..`end` inclusive, in chunks."""
        ...

    async def delete(self, key: str) -> None: ...

    async def source(self, key: str) -> str:
        """A path or URL that ffmpeg and PyAV can read (seekable)."""
        ...

    async def check(self) -> None:
        """Raise `StorageUnavailable` if the backend cannot be used."""
        ...

    async def close(self) -> None: ...


class FileStore:
    """Objects as files under ``root/<tenant>/<id>``, written by rename (never torn)."""

    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put_file(self, key: str, path: Path, *, content_type: str, sha256: str) -> BlobInfo:
        dest = self.path(key)

        def move() -> int:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, dest)
            except OSError:  # another filesystem: copy then rename, still atomic at the end
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, dest)
                path.unlink()
            return dest.stat().st_size

        try:
            size = await asyncio.to_thread(move)
        except OSError as exc:
            raise StorageUnavailable(f"cannot store {key}: {exc.strerror or exc}") from None
        return BlobInfo(key, size)

    async def stat(self, key: str) -> BlobInfo | None:
        try:
            st = await asyncio.to_thread(os.stat, self.path(key))
        except FileNotFoundError:
            return None
        return BlobInfo(key, st.st_size)

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(open, self.path(key), "rb")
        try:
            await asyncio.to_thread(fh.seek, start)
            left = end - start + 1
            while left > 0:
                data = await asyncio.to_thread(fh.read, min(CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.path(key))

    async def source(self, key: str) -> str:
        return str(self.path(key))

    async def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"the storage directory {self.root} is not writable")

    async def close(self) -> None:
        return None


class S3Store:
    """Objects in one S3 bucket under ``<prefix><tenant>/<id>``; any S3 API server (AWS, MinIO,
    Ceph RGW, moto's server in the tests) through `endpoint_url`. Credentials come the way boto3
    finds them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the environment...)."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "",
        create_bucket: bool = False,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.create_bucket = create_bucket
        if client is None:
            try:
                import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 - S3 only
                from botocore.config import Config  # type: ignore[import-untyped]  # noqa: PLC0415
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise ConfigError("the S3 store needs boto3: pip install boto3") from exc
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region or "us-east-1",
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                    max_pool_connections=16,
                ),
            )
        self.client = client
        self._checked = False

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
            BotoCoreError,
            ClientError,
        )

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(what) from None
            raise StorageUnavailable(f"S3 refused {what}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 failed on {what}: {exc}") from None

    async def check(self) -> None:
        if self._checked:
            return
        try:
            await self._call(f"bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)
        except FileNotFoundError:
            if not self.create_bucket:
                raise StorageUnavailable(
                    f"the S3 bucket {self.bucket!r} does not exist (create it, or set "
                    "MEDIA_S3_CREATE_BUCKET=1)"
                ) from None
            await self._call(
                f"creating bucket {self.bucket}", self.client.create_bucket, Bucket=self.bucket
            )
        self._checked = True

    async def put_file(self, key: str, path: Path, *, content_type: str, sha256: str) -> BlobInfo:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]  # noqa: PLC0415

        await self.check()
        size = path.stat().st_size
        config = TransferConfig(
            multipart_threshold=8 * 1024 * 1024,
            multipart_chunksize=8 * 1024 * 1024,
            max_concurrency=2,
            use_threads=True,
        )
        await self._call(
            f"upload of {key}",
            self.client.upload_file,
            str(path),
            self.bucket,
            self._key(key),
            ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha256}},
            Config=config,
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return BlobInfo(key, size)

    async def stat(self, key: str) -> BlobInfo | None:
        try:
            head = await self._call(
                f"head {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key)
            )
        except FileNotFoundError:
            return None
        return BlobInfo(key, int(head["ContentLength"]))

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        got = await self._call(
            f"get {key}",
            self.client.get_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Range=f"bytes={start}-{end}",
        )
        body = got["Body"]
        try:
            while True:
                data = await asyncio.to_thread(body.read, CHUNK)
                if not data:
                    return
                yield data
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self._call(
                f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key)
            )

    async def source(self, key: str) -> str:
        # A presigned GET: ffmpeg and PyAV read it over HTTP with ranges, nothing copied first.
        url = await self._call(
            f"presign {key}",
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=6 * 3600,
        )
        return str(url)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


def open_store(spec: str, root: Path, **s3: Any) -> BlobStore:
    """``file`` (objects under `root`) or ``s3://bucket[/prefix]``."""
    if spec in ("", "file"):
        return FileStore(root)
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        if not bucket:
            raise ConfigError(f"MEDIA_STORAGE={spec!r} names no bucket: s3://BUCKET[/PREFIX]")
        return S3Store(bucket, prefix=(prefix.rstrip("/") + "/") if prefix else "", **s3)
    raise ConfigError(f"MEDIA_STORAGE={spec!r}: use 'file' or 's3://BUCKET[/PREFIX]'")
