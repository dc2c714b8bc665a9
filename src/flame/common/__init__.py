"""Shared base of all FLAME components: configuration, logging, auth, errors."""

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
