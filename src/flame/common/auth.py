"""Authentication and tenant isolation shared by every FLAME HTTP API.

Security model:

* Every request carries ``Authorization: Bearer flm_<43 url-safe chars>``.
  :func:`parse_bearer` extracts the token, :meth:`TokenStore.authenticate`
  maps it to a :class:`Principal`.
* A principal is either an operator (platform staff; may do anything) or a
  tenant, i.e. one media service provider, which may only touch services it
  owns (:func:`require_service_access`).
* Tokens carry 256 random bits, so the store keeps only their SHA-256
  digest: a slow password hash buys nothing when guessing is already
  infeasible, and a leaked store file cannot be turned back into tokens.
* Denials never say whether another tenant's service exists. APIs should
  answer a request for an unknown service exactly like a denied one.
* A token may expire (``expires_at``); an expired token is refused like a
  revoked one. Revocation and expiry take effect on the next request in every
  process: the store is re-read whenever its file changes (checked with one
  ``stat`` per request), never served from a timed cache.
* The last use of each token is kept beside the store, as the modification
  time of ``<store>.d/last-use/<token id>`` (touched at most once a minute per
  token and process, so authentication stays a read).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import difflib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flame.common.atomicfile import atomic_write_private
from flame.common.errors import AuthenticationError, FlameError, PermissionDenied, UserError

__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
    "can_access_service",
    "parse_bearer",
    "require_operator",
    "require_service_access",
    "validate_tenant_id",
]

TOKEN_PREFIX = "flm_"
_TOKEN_RE = re.compile(r"flm_[A-Za-z0-9_-]{43}")  # token_urlsafe(32) is always 43 chars
# Shown in listings so people can tell their tokens apart; 48 of 256 bits,
# which leaves far too many for guessing the rest.
_TOKEN_ID_LEN = len(TOKEN_PREFIX) + 8
_TENANT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_STORE_VERSION = 1
_LAST_USE_EVERY_S = 60.0  # how often one process records a token's use


class Role(enum.StrEnum):
    OPERATOR = "operator"
    TENANT = "tenant"
    # A service router: may read its forwarding tables and report measurements, nothing else,
    # so that a compromised data-plane host cannot register endpoints or change the topology.
    ROUTER = "router"


def validate_tenant_id(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant id (a lowercase DNS label)."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise UserError(
            f"invalid tenant id {tenant!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'acme-media')"
        )
    return tenant


@dataclass(frozen=True)
class Principal:
    """Who is making a request. Tenants always have a tenant id, operators never."""

    name: str
    role: Role
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise TypeError(f"role must be a Role, not {type(self.role).__name__}")
        if self.role is Role.TENANT:
            if self.tenant is None:
                raise UserError(f"tenant principal {self.name!r} needs a tenant id")
            validate_tenant_id(self.tenant)
        elif self.tenant is not None:
            raise UserError(
                f"{self.role.value} principal {self.name!r} must not have a tenant id; "
                "only tenant principals are bound to one tenant"
            )


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as shown in listings; holds nothing secret."""

    name: str
    role: Role
    tenant: str | None
    token_id: str  # the first characters of the token, e.g. "flm_Xy3_a9Qe"
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None  # filled in by TokenStore.list()

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at


@dataclass(frozen=True)
class _Record:
    info: TokenInfo
    digest: str  # hex SHA-256 of the full token


class TokenStore:
    """Hashed bearer tokens in a JSON file (mode 0600).

    The file is read on every call, so a revocation made by another process
    (e.g. the CLI) takes effect on the next request. Updates hold an exclusive
    lock on ``<path>.lock`` so concurrent issue/revoke cannot lose each other's
    changes, which would otherwise be able to resurrect a revoked token.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cached: tuple[tuple[int, int, int, int], builtins.list[_Record]] | None = None
        self._used: dict[str, float] = {}  # token id -> monotonic time its use was recorded

    @property
    def _last_use_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".d") / "last-use"

    def issue(
        self, name: str, role: Role, tenant: str | None = None, *, ttl: timedelta | None = None
    ) -> str:
        """Create a token for a new principal and return it; it is not stored in clear.

        With ``ttl`` the token stops working that long after it is issued."""
        if ttl is not None and ttl.total_seconds() <= 0:
            raise UserError(f"a token's time to live must be positive, not {ttl}")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UserError(
                f"invalid token name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        principal = Principal(name=name, role=role, tenant=tenant)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC).replace(microsecond=0)
        record = _Record(
            info=TokenInfo(
                name=name,
                role=principal.role,
                tenant=principal.tenant,
                token_id=token[:_TOKEN_ID_LEN],
                created_at=now,
                expires_at=None if ttl is None else now + ttl,
            ),
            digest=_digest(token),
        )
        with self._locked():
            records = self._load()
            if any(r.info.name == name for r in records):
                raise UserError(
                    f"a token named {name!r} already exists; revoke it first or pick another name",
                    name=name,
                )
            self._save([*records, record])
        return token

    def authenticate(self, token: str) -> Principal:
        """Return the principal of ``token``; AuthenticationError if it is not valid."""
        # The messages never echo the token: it may be a real one with a typo.
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise AuthenticationError(
                f"malformed bearer token: expected {TOKEN_PREFIX!r} followed by 43 characters"
            )
        digest = _digest(token)
        match: _Record | None = None
        for record in self._load():
            # No early exit: the time taken does not depend on where a match is.
            if hmac.compare_digest(record.digest, digest):
                match = record
        if match is None:
            raise AuthenticationError("unknown or revoked token")
        info = match.info
        if info.expired():
            raise AuthenticationError(
                f"token {info.token_id}… expired at {info.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                "ask for a new one (flame token issue --ttl ...)"
            )
        self._record_use(info.token_id)
        return Principal(name=info.name, role=info.role, tenant=info.tenant)

    def _record_use(self, token_id: str) -> None:
        now = time.monotonic()
        last = self._used.get(token_id)
        if last is not None and now - last < _LAST_USE_EVERY_S:
            return
        self._used[token_id] = now
        marker = self._last_use_dir / token_id
        try:
            marker.touch(mode=0o600)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                marker.touch(mode=0o600)
        except OSError:
            pass  # a read-only state dir must not stop authentication

    def revoke(self, name: str) -> None:
        """Delete the token of principal ``name``; it stops working immediately."""
        with self._locked():
            records = self._load()
            kept = [r for r in records if r.info.name != name]
            if len(kept) == len(records):
                names = [r.info.name for r in records]
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                # An error rather than a no-op: a typo must not look like a revocation.
                raise UserError(f"no token named {name!r}{hint}; nothing was revoked", name=name)
            self._save(kept)
            removed = {r.info.token_id for r in records} - {r.info.token_id for r in kept}
            for token_id in removed:
                with contextlib.suppress(OSError):
                    (self._last_use_dir / token_id).unlink()

    def list(self) -> builtins.list[TokenInfo]:
        """All tokens in issue order, without secrets, with their last use if known."""
        return [
            dataclasses.replace(record.info, last_used_at=self._last_use(record.info.token_id))
            for record in self._load()
        ]

    def _last_use(self, token_id: str) -> datetime | None:
        try:
            mtime = (self._last_use_dir / token_id).stat().st_mtime
        except OSError:
            return None
        return datetime.fromtimestamp(mtime, UTC).replace(microsecond=0)

    # --- storage -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def _load(self) -> builtins.list[_Record]:
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                mode = st.st_mode
                # Every update replaces the file (new inode), so this changes with every write.
                signature = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
                if self._cached is not None and self._cached[0] == signature:
                    return self._cached[1]
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._corrupt(f"cannot read it: {exc.strerror}") from None
        # Like ssh's StrictModes: anyone who can write here can mint tokens.
        if mode & 0o022:
            raise FlameError(
                f"token store {self.path} is writable by group or others (mode "
                f"{mode & 0o777:04o}); refusing to use it. Run: chmod 600 {self.path}",
                path=str(self.path),
            )
        try:
            doc = json.loads(data)
            if doc.get("version") != _STORE_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            records = [_record_from_json(item) for item in doc["tokens"]]
        except (ValueError, TypeError, KeyError, AttributeError, UserError) as exc:
            raise self._corrupt(str(exc)) from None
        self._cached = (signature, records)
        return records

    def _save(self, records: builtins.list[_Record]) -> None:
        doc = {"version": _STORE_VERSION, "tokens": [_record_to_json(r) for r in records]}
        atomic_write_private(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))

    def _corrupt(self, detail: str) -> FlameError:
        # A server-side fault, not the client's: FlameError maps to HTTP 500.
        return FlameError(
            f"token store {self.path} is unusable ({detail}). "
            "Restore it from a backup, or move it away and issue new tokens.",
            path=str(self.path),
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _record_to_json(record: _Record) -> dict[str, Any]:
    info = record.info
    return {
        "name": info.name,
        "role": info.role.value,
        "tenant": info.tenant,
        "token_id": info.token_id,
        "created_at": info.created_at.isoformat(),
        "expires_at": None if info.expires_at is None else info.expires_at.isoformat(),
        "sha256": record.digest,
    }


def _record_from_json(item: dict[str, Any]) -> _Record:
    name, digest = item["name"], item["sha256"]
    if not isinstance(name, str):
        raise TypeError(f"token name must be a string, not {name!r}")
    # Checked so that compare_digest (ASCII str only) cannot fail at auth time.
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"bad digest for token {name!r}")
    principal = Principal(name=name, role=Role(item["role"]), tenant=item["tenant"])
    info = TokenInfo(
        name=principal.name,
        role=principal.role,
        tenant=principal.tenant,
        token_id=str(item["token_id"]),
        created_at=datetime.fromisoformat(item["created_at"]),
        expires_at=None if item.get("expires_at") is None else _utc(item["expires_at"]),
    )
    return _Record(info=info, digest=digest)


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_bearer(header_value: str | None) -> str:
    """Extract the token from an ``Authorization`` header value."""
    usage = "send 'Authorization: Bearer <token>'"
    if header_value is None or not header_value.strip():
        raise AuthenticationError(f"missing Authorization header; {usage}")
    parts = header_value.split()
    # Never quote the header back: a mistyped header may be a bare token.
    if len(parts) == 1 and parts[0].startswith(TOKEN_PREFIX):
        raise AuthenticationError(f"Authorization header lacks the 'Bearer' scheme; {usage}")
    if parts[0].lower() != "bearer":  # schemes are case-insensitive (RFC 9110)
        raise AuthenticationError(f"unsupported authorization scheme; {usage}")
    if len(parts) != 2:
        raise AuthenticationError(
            f"Authorization header must be 'Bearer' followed by exactly one token; {usage}"
        )
    return parts[1]


def can_access_service(principal: Principal, owner_tenant: str) -> bool:
    """Operators may access every service, tenants only their own."""
    if principal.role is Role.OPERATOR:
        return True
    return principal.tenant is not None and principal.tenant == owner_tenant


def require_operator(principal: Principal) -> None:
    """Raise PermissionDenied unless ``principal`` is an operator."""
    if principal.role is not Role.OPERATOR:
        raise PermissionDenied(
            f"this operation requires the operator role; {principal.name!r} is a "
            f"{principal.role.value} principal",
            principal=principal.name,
        )


def require_router(principal: Principal) -> None:
    """Raise PermissionDenied unless ``principal`` is a service router or an operator."""
    if principal.role not in (Role.ROUTER, Role.OPERATOR):
        raise PermissionDenied(
            f"this operation is for service routers and operators; {principal.name!r} is a "
            f"{principal.role.value} principal",
            principal=principal.name,
        )


def require_service_access(principal: Principal, owner_tenant: str) -> None:
    """Raise PermissionDenied unless ``principal`` may access the service.

    The message names only the caller, never ``owner_tenant``, so a denial
    reveals nothing about other tenants or whether the service exists.
    """
    if not can_access_service(principal, owner_tenant):
        raise PermissionDenied(
            f"access denied: tenant {principal.tenant!r} can only access its own services",
            principal=principal.name,
            tenant=principal.tenant,
        )
