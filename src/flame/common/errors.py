"""Exception tree shared by every FLAME component.

::

    Exception
    └── FlameError                  internal / unexpected       HTTP 500, exit 2
        └── UserError               the caller's mistake        HTTP 400, exit 1
            ├── ConfigError         bad config file or env      HTTP 400, exit 1
            ├── AuthenticationError missing or unknown token    HTTP 401, exit 1
            └── PermissionDenied    authenticated, not allowed  HTTP 403, exit 1

The CLI maps ``exit_code`` to the process status and the HTTP APIs map
``http_status`` to the response status with ``as_dict()`` as the JSON body,
so a subclass only needs to pick a ``code`` and, if different, a status.
Messages are shown to users verbatim: say what is wrong and how to fix it,
and never include secrets.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "FlameError",
    "PermissionDenied",
    "UserError",
]

# Keys that as_dict() itself produces; context must not silently overwrite them.
_RESERVED_KEYS = frozenset({"error", "message"})


class FlameError(Exception):
    """Base class of all FLAME errors.

    ``context`` holds structured, JSON-serialisable details (file, key, line,
    ...) that clients can use without parsing the message.
    """

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str, /, **context: object) -> None:
        clash = _RESERVED_KEYS & context.keys()
        if clash:
            raise TypeError(f"context keys {sorted(clash)} are reserved by as_dict()")
        super().__init__(message)
        self.message = message
        self.context: dict[str, object] = context

    def as_dict(self) -> dict[str, object]:
        """Machine-readable form, e.g. the body of an HTTP error response."""
        return {"error": self.code, "message": self.message, **self.context}


class UserError(FlameError):
    """The input or request was wrong; retrying unchanged will fail again."""

    code: ClassVar[str] = "user_error"
    http_status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 1


class ConfigError(UserError):
    """Invalid configuration file or environment variable."""

    code: ClassVar[str] = "config_error"


class AuthenticationError(UserError):
    """No credentials, or credentials that do not identify anyone."""

    code: ClassVar[str] = "authentication_error"
    http_status: ClassVar[int] = 401


class PermissionDenied(UserError):
    """The principal is known but not allowed to do this."""

    code: ClassVar[str] = "permission_denied"
    http_status: ClassVar[int] = 403
