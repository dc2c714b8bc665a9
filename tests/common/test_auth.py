import hashlib
import json
import re
import secrets
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flame.common.auth as auth_module
from flame.common import (
    AuthenticationError,
    FlameError,
    PermissionDenied,
    Principal,
    Role,
    TokenInfo,
    TokenStore,
    UserError,
    can_access_service,
    parse_bearer,
    require_operator,
    require_service_access,
    validate_tenant_id,
)

TOKEN_RE = re.compile(r"flm_[A-Za-z0-9_-]{43}")
OPERATOR = Principal("ops", Role.OPERATOR)
ACME = Principal("acme-ci", Role.TENANT, "acme")
GLOBEX = Principal("globex-ci", Role.TENANT, "globex")


def random_token() -> str:
    return "flm_" + secrets.token_urlsafe(32)


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "state/tokens.json")


# --- issue / authenticate / revoke ---------------------------------------------


def test_issue_returns_well_formed_unique_tokens(store):
    first = store.issue("a", Role.OPERATOR)
    second = store.issue("b", Role.OPERATOR)
    assert TOKEN_RE.fullmatch(first)
    assert TOKEN_RE.fullmatch(second)
    assert first != second


def test_round_trip(store):
    op_token = store.issue("ops", Role.OPERATOR)
    acme_token = store.issue("acme-ci", Role.TENANT, "acme")
    assert store.authenticate(op_token) == OPERATOR
    assert store.authenticate(acme_token) == ACME
    # A fresh instance (e.g. another process) reads the same file.
    assert TokenStore(store.path).authenticate(acme_token) == ACME


def test_store_holds_only_digests(store):
    token = store.issue("acme-ci", Role.TENANT, "acme")
    raw = store.path.read_text()
    assert token not in raw
    assert token[4:] not in raw  # not even the body without its prefix
    assert hashlib.sha256(token.encode()).hexdigest() in raw
    (record,) = json.loads(raw)["tokens"]
    assert record["token_id"] == token[:12]


def test_store_file_is_private(store):
    store.issue("ops", Role.OPERATOR)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_unknown_token_rejected_without_echo(store):
    store.issue("ops", Role.OPERATOR)
    wrong = random_token()
    with pytest.raises(AuthenticationError, match="unknown or revoked token") as info:
        store.authenticate(wrong)
    assert wrong not in str(info.value)
    assert info.value.http_status == 401


def test_token_with_one_changed_character_rejected(store):
    token = store.issue("ops", Role.OPERATOR)
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        store.authenticate(altered)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "flm_",
        lambda t: t[:-1],
        lambda t: t + "x",
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: t.upper().replace("FLM_", "FLX_"),
        lambda t: "Bearer " + t,
        lambda t: t[:20] + "+" + t[21:],
    ],
)
def test_malformed_tokens_rejected(store, mangle):
    token = store.issue("ops", Role.OPERATOR)
    with pytest.raises(AuthenticationError, match="malformed bearer token"):
        store.authenticate(mangle(token))


def test_no_store_file_means_nobody_authenticates(store):
    with pytest.raises(AuthenticationError):
        store.authenticate(random_token())
    assert store.list() == []
    assert not store.path.exists()


def test_revoke(store):
    gone = store.issue("acme-ci", Role.TENANT, "acme")
    kept = store.issue("ops", Role.OPERATOR)
    other_process = TokenStore(store.path)
    assert other_process.authenticate(gone) == ACME
    store.revoke("acme-ci")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        other_process.authenticate(gone)
    assert other_process.authenticate(kept) == OPERATOR
    assert [info.name for info in store.list()] == ["ops"]


def test_revocation_is_seen_on_the_next_request_by_a_process_that_just_authenticated(store):
    """Issue 11 finding 6: no principal cache may outlive a revocation, even within a second."""
    token = store.issue("acme-ci", Role.TENANT, "acme")
    server = TokenStore(store.path)  # a long-running service's store
    for _ in range(3):
        assert server.authenticate(token) == ACME  # served from its parsed copy
    TokenStore(store.path).revoke("acme-ci")  # the CLI, another process
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        server.authenticate(token)
    again = TokenStore(store.path).issue("acme-ci", Role.TENANT, "acme")
    assert server.authenticate(again) == ACME  # and a new token at once too


def test_expired_tokens_are_refused_and_listed_as_expired(store, monkeypatch):
    token = store.issue("short", Role.TENANT, "acme", ttl=timedelta(minutes=5))
    (info,) = store.list()
    assert info.expires_at is not None
    assert timedelta(minutes=5) - timedelta(seconds=2) < info.expires_at - info.created_at
    assert store.authenticate(token) == Principal("short", Role.TENANT, "acme")
    later = info.expires_at + timedelta(seconds=1)

    class _Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(auth_module, "datetime", _Later)
    with pytest.raises(AuthenticationError, match="expired") as refused:
        TokenStore(store.path).authenticate(token)
    assert token not in str(refused.value)
    assert store.list()[0].expired(later)
    with pytest.raises(UserError, match="positive"):
        store.issue("never", Role.OPERATOR, ttl=timedelta(0))


def test_last_use_is_recorded_without_rewriting_the_store(store):
    token = store.issue("ops", Role.OPERATOR)
    assert store.list()[0].last_used_at is None
    before = store.path.stat()
    store.authenticate(token)
    (info,) = store.list()
    assert info.last_used_at is not None
    assert abs((datetime.now(UTC) - info.last_used_at).total_seconds()) < 5
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    store.revoke("ops")
    assert not list((store.path.parent / "tokens.json.d" / "last-use").iterdir())


def test_revoke_unknown_name_is_an_error_with_hint(store):
    store.issue("acme-ci", Role.TENANT, "acme")
    with pytest.raises(UserError) as info:
        store.revoke("acme-cj")
    msg = str(info.value)
    assert "no token named 'acme-cj' (did you mean 'acme-ci'?)" in msg
    assert "nothing was revoked" in msg


def test_duplicate_name_rejected_and_original_kept(store):
    token = store.issue("ops", Role.OPERATOR)
    with pytest.raises(UserError, match="a token named 'ops' already exists"):
        store.issue("ops", Role.OPERATOR)
    assert store.authenticate(token) == OPERATOR
    assert len(store.list()) == 1


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65, "ops\n", "é"])
def test_invalid_token_names_rejected(store, name):
    with pytest.raises(UserError, match="invalid token name"):
        store.issue(name, Role.OPERATOR)
    assert not store.path.exists()


def test_list_shows_no_secrets(store):
    token = store.issue("acme-ci", Role.TENANT, "acme")
    (info,) = store.list()
    assert isinstance(info, TokenInfo)
    assert (info.name, info.role, info.tenant) == ("acme-ci", Role.TENANT, "acme")
    assert info.token_id == token[:12]
    assert isinstance(info.created_at, datetime)
    assert info.created_at.tzinfo is not None
    assert token not in repr(info)
    assert not hasattr(info, "digest")


def test_concurrent_updates_are_serialised(store, monkeypatch):
    # The first writer pauses mid-update; a second issue must wait for it
    # instead of reading the old file, or one of the tokens would be lost.
    entered, release = threading.Event(), threading.Event()
    real_write = auth_module.atomic_write_private

    def slow_write(path, data):
        if not entered.is_set():
            entered.set()
            assert release.wait(5)
        real_write(path, data)

    monkeypatch.setattr(auth_module, "atomic_write_private", slow_write)
    first = threading.Thread(target=store.issue, args=("a", Role.OPERATOR))
    second = threading.Thread(target=store.issue, args=("b", Role.OPERATOR))
    first.start()
    assert entered.wait(5)
    second.start()
    time.sleep(0.2)
    assert second.is_alive(), "second update did not wait for the lock"
    release.set()
    first.join(5)
    second.join(5)
    assert sorted(info.name for info in store.list()) == ["a", "b"]


# --- damaged store -------------------------------------------------------------


def test_corrupt_store_is_a_server_error(store):
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    store.path.chmod(0o600)
    with pytest.raises(FlameError) as info:
        store.authenticate(random_token())
    assert type(info.value) is FlameError  # not the client's fault: HTTP 500
    assert info.value.http_status == 500
    assert f"token store {store.path} is unusable" in str(info.value)
    assert "Restore it from a backup" in str(info.value)


def test_tampered_digest_is_reported(store):
    store.issue("ops", Role.OPERATOR)
    doc = json.loads(store.path.read_text())
    doc["tokens"][0]["sha256"] = "é" * 64
    store.path.write_text(json.dumps(doc))
    with pytest.raises(FlameError, match="bad digest for token 'ops'"):
        store.authenticate(random_token())


def test_group_writable_store_is_refused(store):
    token = store.issue("ops", Role.OPERATOR)
    store.path.chmod(0o620)
    with pytest.raises(FlameError, match="writable by group or others") as info:
        store.authenticate(token)
    assert f"chmod 600 {store.path}" in str(info.value)


# --- tenants and principals ----------------------------------------------------


@pytest.mark.parametrize("tenant", ["a", "0", "acme", "acme-media", "a1-b2", "a" * 63])
def test_valid_tenant_ids(tenant):
    assert validate_tenant_id(tenant) == tenant


@pytest.mark.parametrize(
    "tenant",
    ["", "-acme", "acme-", "Acme", "acme_media", "acme.media", "a" * 64, "acme\n", " acme"],
)
def test_invalid_tenant_ids(store, tenant):
    with pytest.raises(UserError) as info:
        store.issue("t", Role.TENANT, tenant)
    assert "invalid tenant id" in str(info.value)
    assert "lowercase letters, digits and '-'" in str(info.value)
    assert not store.path.exists()


def test_tenant_principal_needs_tenant_and_operator_must_not_have_one(store):
    with pytest.raises(UserError, match="tenant principal 't' needs a tenant id"):
        store.issue("t", Role.TENANT)
    with pytest.raises(UserError, match="operator principal 'o' must not have a tenant id"):
        store.issue("o", Role.OPERATOR, "acme")
    assert not store.path.exists()


def test_principal_is_frozen():
    with pytest.raises(AttributeError):
        ACME.tenant = "globex"  # type: ignore[misc]


# --- Authorization header --------------------------------------------------------


@pytest.mark.parametrize("value", ["Bearer abc", "bearer abc", "BEARER  abc ", "Bearer\tabc"])
def test_parse_bearer(value):
    assert parse_bearer(value) == "abc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("   ", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme"),
        ("Token flm_abc", "unsupported authorization scheme"),
        ("flm_bare", "lacks the 'Bearer' scheme"),
        ("Bearer", "exactly one token"),
        ("Bearer a b", "exactly one token"),
    ],
)
def test_parse_bearer_errors(value, expected):
    with pytest.raises(AuthenticationError) as info:
        parse_bearer(value)
    msg = str(info.value)
    assert expected in msg
    assert "Authorization: Bearer <token>" in msg
    for secret in ("dXNlcjpwYXNz", "flm_abc", "flm_bare"):
        assert secret not in msg


# --- authorization -------------------------------------------------------------


def test_can_access_service():
    assert can_access_service(OPERATOR, "acme")
    assert can_access_service(OPERATOR, "globex")
    assert can_access_service(ACME, "acme")
    assert not can_access_service(ACME, "globex")
    assert not can_access_service(GLOBEX, "acme")


def test_require_operator():
    require_operator(OPERATOR)
    with pytest.raises(PermissionDenied) as info:
        require_operator(ACME)
    assert "requires the operator role" in str(info.value)
    assert "'acme-ci'" in str(info.value)
    assert info.value.http_status == 403


def test_require_service_access():
    require_service_access(OPERATOR, "globex")
    require_service_access(ACME, "acme")
    with pytest.raises(PermissionDenied) as info:
        require_service_access(ACME, "globex")
    assert "access denied" in str(info.value)


def test_denial_does_not_reveal_other_tenants():
    # Same answer whatever the owner is, so a tenant cannot probe for others.
    def denial(owner: str) -> dict[str, object]:
        with pytest.raises(PermissionDenied) as info:
            require_service_access(ACME, owner)
        return info.value.as_dict()

    assert denial("globex") == denial("initech")
    assert "globex" not in json.dumps(denial("globex"))


# --- property ------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated_store(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    store = TokenStore(tmp_path_factory.mktemp("auth") / "tokens.json")
    store.issue("ops", Role.OPERATOR)
    store.issue("acme-ci", Role.TENANT, "acme")
    return store


_WELL_FORMED = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=43,
    max_size=43,
).map(lambda body: "flm_" + body)


@settings(database=None)
@given(st.one_of(st.text(), _WELL_FORMED, st.text().map(lambda s: "flm_" + s)))
def test_authenticate_only_raises_authentication_error(populated_store, candidate):
    with pytest.raises(AuthenticationError):
        populated_store.authenticate(candidate)
