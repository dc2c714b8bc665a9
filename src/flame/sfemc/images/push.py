"""Tenants push their own SF images through the orchestrator's API (issue 13, item 5).

`flame push DIR|ARCHIVE` builds the image on the tenant's machine (as `flame package` does) and
uploads it with the tenant's token: ``POST /v1/images?digest=sha256:...&tag=T`` with the archive
as the body. The orchestrator (`receive`):

* refuses a body over `PushLimits.max_image_bytes` (413) from its Content-Length, else while it
  streams in: at most that much is ever held, and at most `max_concurrent` uploads at once;
* re-hashes it against the digest the client computed (409 on mismatch: a corrupted upload);
* holds each tenant to a quota (`quota_bytes`: 413, `quota_images`: 429), checked again under
  the repository's lock when storing, so two concurrent pushes cannot both slip under it;
* stores it owned by the tenant: only its owners list, use and delete it
  (`ImageRepository.resolve(ref, tenant)`); the operator's images serve everyone.

Limits come from the environment of `flame serve orchestrator` (`PushLimits.from_env`):
``FLAME_IMAGE_MAX_BYTES``, ``FLAME_IMAGE_QUOTA_BYTES``, ``FLAME_IMAGE_QUOTA_IMAGES``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flame.sfemc.images.archive import GZIP_MAGIC, ZSTD_MAGIC, build_image, digest_of
from flame.sfemc.images.errors import ImageError, ImageTooLarge, QuotaExceeded, TooManyImages
from flame.sfemc.images.repository import ImageInfo, ImageRepository, check_digest

__all__ = ["PushLimits", "load_image", "receive", "upload"]

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushLimits:
    max_image_bytes: int = 256 * _MB
    quota_bytes: int = 1024 * _MB
    quota_images: int = 50
    max_concurrent: int = 2  # uploads held in memory at once (each up to max_image_bytes)

    @classmethod
    def from_env(cls) -> PushLimits:
        def number(name: str, default: int) -> int:
            raw = os.environ.get(name, "").strip()
            try:
                return int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name} must be a whole number of bytes, not {raw!r}") from None

        d = cls()
        return cls(
            max_image_bytes=number("FLAME_IMAGE_MAX_BYTES", d.max_image_bytes),
            quota_bytes=number("FLAME_IMAGE_QUOTA_BYTES", d.quota_bytes),
            quota_images=number("FLAME_IMAGE_QUOTA_IMAGES", d.quota_images),
        )

    def check_quota(
        self, tenant: str, images: Sequence[ImageInfo], new_size: int, old: ImageInfo | None
    ) -> None:
        """Refuse a push that would take `tenant` over its quota (nothing if it owns it already)."""
        if old is not None and tenant in old.owners:
            return
        owned = [i for i in images if tenant in i.owners]
        if len(owned) + 1 > self.quota_images:
            raise TooManyImages(
                f"tenant {tenant!r} has {len(owned)} images, its quota is {self.quota_images}",
                hint="delete images it no longer uses (DELETE /v1/images/<digest>), then push",
                quota_images=self.quota_images,
            )
        used = sum(i.size for i in owned)
        if used + new_size > self.quota_bytes:
            raise QuotaExceeded(
                f"tenant {tenant!r} stores {used} bytes of images; {new_size} more would pass "
                f"its quota of {self.quota_bytes} bytes",
                hint="delete images it no longer uses, or ask the operator for a larger quota",
                quota_bytes=self.quota_bytes,
                used_bytes=used,
            )


async def receive(
    repo: ImageRepository,
    owner: str | None,
    body: AsyncIterator[bytes],
    *,
    digest: str,
    tags: Sequence[str],
    content_length: int | None,
    limits: PushLimits,
    slots: asyncio.Semaphore | None = None,
) -> tuple[ImageInfo, bool]:
    """Store a pushed archive for `owner` (None: the operator). (info, whether it is new)."""
    check_digest(digest)
    for tag in tags:
        if not tag or len(tag) > 128 or any(c in tag for c in ":/ \t\n"):
            raise ImageError(f"tag {tag!r} is not a valid tag", hint="e.g. 1.0 or latest")
    too_large = ImageTooLarge(
        f"the image is larger than this orchestrator accepts ({limits.max_image_bytes} bytes)",
        hint="leave out what the SF does not need (test data, caches) or ask the operator",
        max_bytes=limits.max_image_bytes,
    )
    if content_length is not None and content_length > limits.max_image_bytes:
        raise too_large
    if owner is not None:  # refuse early what the quota cannot take, before reading the body
        known = await asyncio.to_thread(repo.list)
        old = next((i for i in known if i.digest == digest), None)
        limits.check_quota(owner, known, content_length or 0, old)
    async with slots or asyncio.Semaphore(1):
        data = bytearray()
        async for chunk in body:
            data += chunk
            if len(data) > limits.max_image_bytes:
                raise too_large
        blob = bytes(data)
    if owner is None:
        before = await asyncio.to_thread(repo.list)
        info = await asyncio.to_thread(repo.put, blob, digest=digest, tags=tags)
        return info, all(i.digest != info.digest for i in before)

    fresh: list[bool] = []

    def admit(images: list[ImageInfo], old: ImageInfo | None) -> None:
        limits.check_quota(owner, images, len(blob), old)
        fresh.append(old is None or owner not in old.owners)

    info = await asyncio.to_thread(
        repo.put, blob, digest=digest, tags=tags, owner=owner, admit=admit
    )
    return info, bool(fresh and fresh[0])


def load_image(path: Path) -> bytes:
    """`flame push`'s argument: an SF directory (built now) or an archive `flame package -o`
    wrote."""
    if path.is_dir():
        return build_image(path)[0]
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    if not blob.startswith((ZSTD_MAGIC, GZIP_MAGIC)):
        raise ImageError(
            f"{path} is neither an SF directory nor an image archive",
            hint="give the SF's directory (with flame-sf.yaml) or `flame package DIR -o FILE`",
        )
    return blob


def upload(
    api_url: str,
    token: str | None,
    blob: bytes,
    *,
    tags: Sequence[str] = (),
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 300.0,
) -> dict[str, object]:
    """POST the archive to the orchestrator; its JSON answer, or a UserError saying why not."""
    import httpx  # noqa: PLC0415 - only when pushing

    from flame.common.errors import UserError  # noqa: PLC0415
    from flame.common.tls import require_private_url  # noqa: PLC0415

    url = api_url.rstrip("/")
    require_private_url(url, token, what="the orchestrator")
    params: dict[str, str | list[str]] = {"digest": digest_of(blob), "tag": list(tags)}
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = httpx.post(
            f"{url}/v1/images",
            params=params,
            content=blob,
            headers=headers,
            timeout=timeout_s,
            verify=verify,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise UserError(
            f"cannot reach the orchestrator at {url} ({type(exc).__name__})", url=url
        ) from None
    try:
        body = r.json()
    except ValueError:
        body = {"message": r.text[:300] or r.reason_phrase}
    if r.status_code >= 400:
        raise UserError(
            str(body.get("message") or f"HTTP {r.status_code}"),
            status=r.status_code,
            code=body.get("error"),
        )
    return dict(body)
