"""Shared base of all FLAME components: configuration, logging, auth, errors.

Names are re-exported lazily (PEP 562) so that importing one small module of `flame.common`
(the validator needs only diagnostics and YAML) does not pay for auth, config and logging.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flame.common.auth import (
        TOKEN_PREFIX,
        Principal,
        Role,
        TokenInfo,
        TokenStore,
        can_access_service,
        parse_bearer,
        require_operator,
        require_service_access,
        validate_tenant_id,
    )
    from flame.common.config import (
        Config,
        default_config_path,
        default_state_dir,
        load_config,
        save_config_values,
    )
    from flame.common.errors import (
        AuthenticationError,
        ConfigError,
        FlameError,
        PermissionDenied,
        UserError,
    )
    from flame.common.logging import redact_text, setup_logging

_HOMES = {
    "auth": (
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
    ),
    "config": (
        "Config",
        "default_config_path",
        "default_state_dir",
        "load_config",
        "save_config_values",
    ),
    "errors": ("AuthenticationError", "ConfigError", "FlameError", "PermissionDenied", "UserError"),
    "logging": ("redact_text", "setup_logging"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'flame.common' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flame.common.{module}"), name)


__all__ = [
    "TOKEN_PREFIX",
    "AuthenticationError",
    "Config",
    "ConfigError",
    "FlameError",
    "PermissionDenied",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
    "UserError",
    "can_access_service",
    "default_config_path",
    "default_state_dir",
    "load_config",
    "parse_bearer",
    "redact_text",
    "require_operator",
    "require_service_access",
    "save_config_values",
    "setup_logging",
    "validate_tenant_id",
]
