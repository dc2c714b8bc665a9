"""Errors of SF images; all `UserError`s (the CLI exits 1, an HTTP API answers `http_status`)."""

from __future__ import annotations

from typing import ClassVar

from flame.common.errors import UserError


class ImageError(UserError):
    code: ClassVar[str] = "image_error"

    def __init__(self, message: str, /, *, hint: str | None = None, **context: object) -> None:
        # The hint is part of the message a person reads and a field for programs.
        super().__init__(f"{message} (hint: {hint})" if hint else message, hint=hint, **context)


class ImageNotFound(ImageError):
    code: ClassVar[str] = "image_not_found"
    http_status: ClassVar[int] = 404


class IntegrityError(ImageError):
    code: ClassVar[str] = "image_integrity"
    http_status: ClassVar[int] = 409


class UnsafeArchive(ImageError):
    code: ClassVar[str] = "unsafe_archive"
    http_status: ClassVar[int] = 422


class ImageTooLarge(ImageError):
    """An upload over the per-image size limit."""

    code: ClassVar[str] = "image_too_large"
    http_status: ClassVar[int] = 413


class QuotaExceeded(ImageError):
    """A tenant's images would pass its quota (bytes: 413; number of images: 429)."""

    code: ClassVar[str] = "quota_exceeded"
    http_status: ClassVar[int] = 413


class TooManyImages(QuotaExceeded):
    http_status: ClassVar[int] = 429
