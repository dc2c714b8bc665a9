import pytest

from flame.common import (
    AuthenticationError,
    ConfigError,
    FlameError,
    PermissionDenied,
    UserError,
)


@pytest.mark.parametrize(
    ("cls", "code", "status", "exit_code"),
    [
        (FlameError, "internal_error", 500, 2),
        (UserError, "user_error", 400, 1),
        (ConfigError, "config_error", 400, 1),
        (AuthenticationError, "authentication_error", 401, 1),
        (PermissionDenied, "permission_denied", 403, 1),
    ],
)
def test_codes_and_statuses(cls, code, status, exit_code):
    assert (cls.code, cls.http_status, cls.exit_code) == (code, status, exit_code)


@pytest.mark.parametrize("cls", [ConfigError, AuthenticationError, PermissionDenied])
def test_user_errors_derive_from_user_error(cls):
    assert issubclass(cls, UserError)
    assert issubclass(cls, FlameError)


def test_as_dict_has_code_message_and_context():
    err = ConfigError("bad key", file="/etc/flame.toml", line=3)
    assert str(err) == "bad key"
    assert err.as_dict() == {
        "error": "config_error",
        "message": "bad key",
        "file": "/etc/flame.toml",
        "line": 3,
    }


@pytest.mark.parametrize("reserved", ["error", "message"])
def test_context_cannot_overwrite_fixed_fields(reserved):
    with pytest.raises(TypeError, match="reserved"):
        FlameError("x", **{reserved: "y"})
