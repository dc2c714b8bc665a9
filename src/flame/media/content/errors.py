"""HTTP problems of the content SF, each a `UserError` with its status, answered as JSON
``{"error": code, "message": ..., ...}`` (the handler adds the tus headers on upload routes)."""

from __future__ import annotations

from typing import ClassVar

from flame.common.errors import FlameError, UserError

__all__ = [
    "BadRequest",
    "ChecksumMismatch",
    "Conflict",
    "ContentError",
    "Gone",
    "Invalid",
    "Locked",
    "NotFound",
    "PreconditionFailed",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "StorageUnavailable",
    "TooLarge",
    "UnsupportedMediaType",
]


class ContentError(UserError):
    """A refused request; ``code`` may be narrowed per instance (``quota_exceeded``...)."""

    code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        /,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **context: object,
    ) -> None:
        super().__init__(message, **context)
        self.specific = code
        self.headers = dict(headers or {})

    def as_dict(self) -> dict[str, object]:
        doc = super().as_dict()
        if self.specific:
            doc["error"] = self.specific
        return doc


class BadRequest(ContentError):
    pass


class NotFound(ContentError):
    code = "not_found"
    http_status = 404


class Gone(ContentError):
    code = "gone"
    http_status = 410


class Conflict(ContentError):
    code = "conflict"
    http_status = 409


class Locked(ContentError):
    code = "locked"
    http_status = 423


class TooLarge(ContentError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(ContentError):
    code = "unsupported_media_type"
    http_status = 415


class PreconditionFailed(ContentError):
    code = "precondition_failed"
    http_status = 412


class ChecksumMismatch(ContentError):
    code = "checksum_mismatch"
    http_status = 460  # tus checksum extension


class Invalid(ContentError):
    code = "invalid"
    http_status = 422


class RequestTimeout(ContentError):
    code = "request_timeout"
    http_status = 408


class RangeNotSatisfiable(ContentError):
    code = "range_not_satisfiable"
    http_status = 416


class StorageUnavailable(FlameError):
    """The storage backend failed (S3 down, disk full): 503, the client may retry."""

    code: ClassVar[str] = "storage_unavailable"
    http_status: ClassVar[int] = 503
