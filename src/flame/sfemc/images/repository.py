"""The image repository: images in a directory, named by digest and tagged, written atomically
under a lock, verified when read."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import json
import re
import ssl
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.common.atomicfile import atomic_write_private
from flame.sfemc.images.archive import ZSTD_MAGIC, decompress, digest_of, unpack_archive
from flame.sfemc.images.errors import ImageError, ImageNotFound, IntegrityError
from flame.sfemc.images.manifest import IMAGE_MANIFEST, ImageManifest

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# -- the repository ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageInfo:
    digest: str
    name: str
    tags: tuple[str, ...]
    size: int
    created: str  # ISO 8601 UTC, when the repository first stored it
    compression: str
    manifest: ImageManifest
    # Who may use it: the operator's images (`flame package`, public) serve every tenant; a
    # tenant's pushed image serves its owners only (the tenants that pushed these bytes).
    public: bool = True
    owners: tuple[str, ...] = ()

    def usable_by(self, tenant: str | None) -> bool:
        return self.public or tenant is None or tenant in self.owners

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "public": self.public,
            "owners": list(self.owners),
            "name": self.name,
            "tags": list(self.tags),
            "size": self.size,
            "created": self.created,
            "compression": self.compression,
            "manifest": self.manifest.to_json(),
        }


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ImageError(
            f"{digest!r} is not an image digest",
            hint="write 'sha256:' and 64 lowercase hex digits, as `flame images list` shows",
        )
    return digest


class ImageRepository:
    """Images in a directory: ``blobs/<hex>`` (the archive) and ``meta/<hex>.json``.

    Writes go through a temporary file and a rename under a lock file, so concurrent
    `flame package` runs and a crash mid-write never leave a torn or unnamed blob.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._meta = root / "meta"

    # writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(
        self,
        blob: bytes,
        *,
        digest: str | None = None,
        tags: Sequence[str] = (),
        owner: str | None = None,
        admit: Callable[[list[ImageInfo], ImageInfo | None], None] | None = None,
    ) -> ImageInfo:
        """Store an archive; `digest`, when given, must match (an upload that was corrupted).

        `owner`: the tenant pushing it (None: the operator, whose images every tenant may use).
        `admit(images, old)` runs under the lock before anything is written, with every stored
        image and this digest's, and raises to refuse (a tenant's quota)."""
        actual = digest_of(blob)
        if digest is not None and check_digest(digest) != actual:
            raise IntegrityError(
                f"the archive hashes to {actual}, not {digest}: it was corrupted or truncated",
                digest=digest,
                actual=actual,
            )
        manifest = self._read_manifest(blob, actual)
        compression = "zstd" if blob.startswith(ZSTD_MAGIC) else "gzip"
        hexd = actual.removeprefix("sha256:")
        with self._locked():
            self._blobs.mkdir(exist_ok=True)
            self._meta.mkdir(exist_ok=True)
            old = self._info_or_none(actual)
            if admit is not None:
                admit(self._all(), old)
            if old is None:
                atomic_write_private(self._blobs / hexd, blob)
            public = owner is None or (old is not None and old.public)
            owners = set(old.owners if old else ()) | ({owner} if owner else set())
            info = ImageInfo(
                digest=actual,
                name=manifest.name,
                tags=tuple(sorted(set(old.tags if old else ()) | set(tags))),
                size=len(blob),
                created=old.created if old else _now(),
                compression=compression,
                manifest=manifest,
                public=public,
                owners=tuple(sorted(owners)),
            )
            # A tag names one image per name and owner: move it off an older image of that
            # name of the same owner (a tenant never moves another's or the operator's tags).
            for other in self._all():
                if (
                    other.digest != actual
                    and other.name == info.name
                    and set(other.tags) & set(tags)
                    and (other.public if owner is None else other.owners == (owner,))
                ):
                    self._write_meta(
                        other.digest,
                        {**other.as_dict(), "tags": sorted(set(other.tags) - set(tags))},
                    )
            self._write_meta(actual, info.as_dict())
        return info

    def _write_meta(self, digest: str, doc: dict[str, Any]) -> None:
        path = self._meta / f"{digest.removeprefix('sha256:')}.json"
        atomic_write_private(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    @staticmethod
    def manifest_of(blob: bytes) -> ImageManifest:
        """The manifest inside an archive (ImageError if it has none)."""
        return ImageRepository._read_manifest(blob, "the archive")

    @staticmethod
    def _read_manifest(blob: bytes, what: str) -> ImageManifest:
        raw = decompress(blob, what)
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                member = tar.getmember(IMAGE_MANIFEST)
                fh = tar.extractfile(member)
                if fh is None:
                    raise KeyError(IMAGE_MANIFEST)
                return ImageManifest.from_json(json.loads(fh.read()))
        except (KeyError, tarfile.TarError, ValueError, TypeError) as exc:
            raise ImageError(
                f"{what} is not a FLAME SF image (no valid {IMAGE_MANIFEST}): {exc}",
                hint="build images with `flame package DIR`",
            ) from exc

    def delete(
        self, digest: str, *, in_use: Sequence[str] = (), tenant: str | None = None
    ) -> ImageInfo:
        """Remove an image. `in_use` names the SFEs placed from it: deleting is then refused.

        `tenant`: a tenant removes only its own claim (another owner keeps the image); an
        image it does not own is not found, the operator's included."""
        info = self.get(digest)
        if tenant is not None and tenant not in info.owners:
            raise ImageNotFound(f"no image {digest} of tenant {tenant!r}", digest=digest)
        if tenant is not None and (info.public or set(info.owners) - {tenant}):
            with self._locked():
                kept = sorted(set(info.owners) - {tenant})
                self._write_meta(info.digest, {**info.as_dict(), "owners": kept})
            return info
        if in_use:
            raise ImageError(
                f"image {digest} is used by {len(in_use)} endpoint(s): {', '.join(sorted(in_use))}",
                hint="remove those endpoints first (`flame undeploy`), then delete the image",
                in_use=sorted(in_use),
            )
        hexd = info.digest.removeprefix("sha256:")
        with self._locked():
            (self._meta / f"{hexd}.json").unlink(missing_ok=True)
            (self._blobs / hexd).unlink(missing_ok=True)
        return info

    # reading

    def resolve(self, ref: str, tenant: str | None = None) -> str:
        """A digest, ``name`` (latest stored) or ``name:tag`` -> digest.

        For a `tenant`, only the images it may use (its own, then the operator's: its own
        shadow the operator's of the same name for it alone); another tenant's image is
        "not found", as if it did not exist."""
        if ref.startswith("sha256:"):
            info = self.get(check_digest(ref))
            if not info.usable_by(tenant):
                raise ImageNotFound(_not_usable(ref, tenant), digest=ref)
            return info.digest
        name, _, tag = ref.partition(":")
        found = [
            i
            for i in self._all()
            if i.name == name and (not tag or tag in i.tags) and i.usable_by(tenant)
        ]
        own = [i for i in found if tenant is not None and tenant in i.owners]
        found = own or found
        if not found and tenant is not None:
            raise ImageNotFound(_not_usable(ref, tenant))
        if not found:
            raise ImageNotFound(
                f"no image named {ref!r} in {self.root}",
                hint="`flame images list` shows what is stored; `flame package DIR` adds one",
            )
        return max(found, key=lambda i: i.created).digest

    def get(self, digest: str) -> ImageInfo:
        info = self._info_or_none(check_digest(digest))
        if info is None:
            raise ImageNotFound(
                f"no image {digest} in the repository {self.root}",
                hint="`flame images list` shows what is stored; `flame package DIR` adds one",
                digest=digest,
            )
        return info

    def _info_or_none(self, digest: str) -> ImageInfo | None:
        path = self._meta / f"{digest.removeprefix('sha256:')}.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return ImageInfo(
            digest=doc["digest"],
            name=doc["name"],
            tags=tuple(doc["tags"]),
            size=doc["size"],
            created=doc["created"],
            compression=doc["compression"],
            manifest=ImageManifest.from_json(doc["manifest"]),
            public=bool(doc.get("public", True)),  # images stored before tenants could push
            owners=tuple(doc.get("owners") or ()),
        )

    def _all(self) -> list[ImageInfo]:
        if not self._meta.is_dir():
            return []
        infos = (self._info_or_none("sha256:" + p.stem) for p in self._meta.glob("*.json"))
        return [i for i in infos if i is not None]

    def list(self) -> list[ImageInfo]:
        return sorted(self._all(), key=lambda i: (i.name, i.created, i.digest))

    def blob_path(self, digest: str) -> Path:
        return self._blobs / self.get(digest).digest.removeprefix("sha256:")

    def read(self, digest: str) -> bytes:
        """The archive's bytes, re-hashed: integrity is checked on every read."""
        path = self.blob_path(digest)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"image {digest} is listed but its archive {path} is missing",
                hint="delete it with `flame images rm` and package it again",
                digest=digest,
            ) from exc
        actual = digest_of(blob)
        if actual != digest:
            raise IntegrityError(
                f"image {digest} is corrupted: its archive now hashes to {actual}",
                hint="delete it with `flame images rm` and package it again",
                digest=digest,
                actual=actual,
            )
        return blob

    def verify(self, digest: str) -> ImageInfo:
        self.read(digest)
        return self.get(digest)

    def unpack(self, digest: str, dest: Path) -> ImageManifest:
        """Verify, then extract the image's ``app/`` tree into `dest` (created, must be empty).

        The bytes that were hashed are the bytes extracted (no re-read between check and use).
        """
        blob = self.read(digest)
        return unpack_archive(blob, dest, what=digest)

    # -- serving over HTTP ------------------------------------------------------------------

    def app(self) -> Any:
        """A read-only ASGI app serving this repository to other hosts' process VIMs.

        ``GET /v1/images`` lists, ``GET /v1/images/<digest>`` returns the archive (re-hashed
        before it is sent, so a corrupted blob is answered 409, never served).
        """
        from starlette.applications import Starlette  # noqa: PLC0415 - only when serving
        from starlette.requests import Request  # noqa: PLC0415
        from starlette.responses import JSONResponse, Response  # noqa: PLC0415
        from starlette.routing import Route  # noqa: PLC0415

        async def listing(_: Request) -> Response:
            return JSONResponse([i.as_dict() for i in self.list()])

        async def blob(request: Request) -> Response:
            try:
                data = self.read(request.path_params["digest"])
            except ImageError as exc:
                return JSONResponse(exc.as_dict(), status_code=exc.http_status)
            return Response(data, media_type="application/octet-stream")

        return Starlette(routes=[Route("/v1/images", listing), Route("/v1/images/{digest}", blob)])

    def pull(
        self,
        base_url: str,
        digest: str,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        verify: ssl.SSLContext | bool = True,
    ) -> ImageInfo:
        """Fetch an image from another repository's `app()` (or the orchestrator's
        `GET /v1/images/<digest>`, with an operator `token`) unless this one holds it already:
        a local cache. The digest is checked on arrival (`put`), so a corrupted or substituted
        archive is refused (IntegrityError) and never stored. A token goes only over HTTPS
        (`verify`: httpx's) or loopback (`flame.common.tls.require_private_url`)."""
        import httpx  # noqa: PLC0415 - only when pulling

        from flame.common.tls import require_private_url  # noqa: PLC0415

        check_digest(digest)
        require_private_url(base_url, token, what="the image repository")
        if (known := self._info_or_none(digest)) is not None:
            try:
                self.read(digest)  # a cached archive that rotted is fetched again
                return known
            except IntegrityError:
                pass
        url = f"{base_url.rstrip('/')}/v1/images/{digest}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.get(
                url, timeout=timeout_s, trust_env=False, headers=headers, verify=verify
            )
        except httpx.HTTPError as exc:
            raise ImageError(
                f"cannot fetch {url}: {exc}", hint="is the repository served?", url=url
            ) from exc
        if response.status_code != 200:
            kind = {404: ImageNotFound, 409: IntegrityError}.get(response.status_code, ImageError)
            raise kind(
                f"{url} answered {response.status_code}: {response.text[:200]}",
                digest=digest,
                url=url,
                status=response.status_code,
            )
        hexd = digest.removeprefix("sha256:")
        if self._info_or_none(digest) is not None:  # the rotten copy: replaced, not kept
            with self._locked():
                (self._blobs / hexd).unlink(missing_ok=True)
                (self._meta / f"{hexd}.json").unlink(missing_ok=True)
        return self.put(response.content, digest=digest)


def _not_usable(ref: str, tenant: str | None) -> str:
    what = ref if ref.startswith("sha256:") else f"named {ref!r}"
    return (
        f"no image {what} that tenant {tenant!r} may use (its own pushed images and the "
        "operator's; `flame images` lists them, `flame push DIR` adds one)"
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
