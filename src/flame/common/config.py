"""Client and component configuration: defaults < TOML file < environment.

The file is flat TOML with string values only::

    state_dir = "~/flame-state"       # relative paths are relative to this file
    log_level = "DEBUG"
    log_format = "json"
    api_url = "https://orchestrator.example:7080"
    token = "flm_..."
    ca_file = "~/flame-state/ca/ca.crt"   # trust this CA for https:// URLs (the platform's)

It is ``$XDG_CONFIG_HOME/flame/config.toml`` (``~/.config/flame/config.toml``)
unless ``FLAME_CONFIG`` or the ``path`` argument names another one. Each key can
be overridden by an environment variable, see ``ENV_VARS``; an empty variable
counts as unset, so ``FLAME_TOKEN=`` does not clear a token from the file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from flame.common.atomicfile import atomic_write_private
from flame.common.errors import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_VARS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "Config",
    "default_config_path",
    "default_state_dir",
    "load_config",
    "save_config_values",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
DEFAULT_API_URL = "http://127.0.0.1:7080"  # the orchestrator's default port
CONFIG_ENV_VAR = "FLAME_CONFIG"
ENV_VARS: Mapping[str, str] = {
    "state_dir": "FLAME_STATE_DIR",
    "log_level": "FLAME_LOG_LEVEL",
    "log_format": "FLAME_LOG_FORMAT",
    "api_url": "FLAME_API_URL",
    "pce_url": "FLAME_PCE_URL",
    "clmc_url": "FLAME_CLMC_URL",
    "token": "FLAME_TOKEN",
    "ca_file": "FLAME_CA_FILE",
}
_KEYS = tuple(ENV_VARS)

# RFC 6750 b64token: anything else cannot travel in an Authorization header.
_BEARER_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# tomllib (3.11) only reports the position inside the message text.
_TOML_POSITION_RE = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/flame``, falling back to ``~/.local/share/flame``."""
    return _xdg_dir(os.environ if environ is None else environ, "XDG_DATA_HOME", ".local/share")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/flame/config.toml``, falling back to ``~/.config/...``."""
    env = os.environ if environ is None else environ
    return _xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "config.toml"


@dataclass(frozen=True, repr=False)
class Config:
    """Effective settings. Build it with :func:`load_config`, which validates."""

    state_dir: Path = field(default_factory=default_state_dir)
    log_level: str = "INFO"
    log_format: str = "text"
    api_url: str = DEFAULT_API_URL  # the orchestrator: deploy, status, undeploy, logs
    pce_url: str | None = None  # the PCE (topology, routes, delegations)
    clmc_url: str | None = None  # the CLMC (monitoring)
    token: str | None = None
    ca_file: Path | None = None  # CA certificate clients verify https:// servers with (issue 15)

    def __repr__(self) -> str:
        # Configs end up in logs and tracebacks; the token must not.
        token = None if self.token is None else "***"
        return (
            f"Config(state_dir={self.state_dir!r}, log_level={self.log_level!r}, "
            f"log_format={self.log_format!r}, api_url={self.api_url!r}, "
            f"pce_url={self.pce_url!r}, clmc_url={self.clmc_url!r}, token={token!r}, "
            f"ca_file={self.ca_file!r})"
        )


class _Settings(TypedDict, total=False):
    state_dir: Path
    log_level: str
    log_format: str
    api_url: str
    pce_url: str
    clmc_url: str
    token: str | None
    ca_file: Path


@dataclass(frozen=True)
class _Origin:
    """Where a raw value came from, so errors can say what to fix and where."""

    where: str
    fix: str
    base_dir: Path  # relative state_dir values are resolved against this
    home: Path  # what ``~`` means in state_dir
    context: Mapping[str, object]

    def error(self, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.where}: {problem}. {hint or self.fix}", **self.context)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then the config file, then ``FLAME_*`` environment variables.

    ``path`` wins over ``FLAME_CONFIG``, which wins over the default location.
    A missing default file is fine; a missing file that was explicitly named is
    an error, because silently ignoring a typo'd path hides the user's settings.
    ``environ`` defaults to ``os.environ`` (tests pass their own).
    """
    env = os.environ if environ is None else environ
    settings: _Settings = {"state_dir": default_state_dir(env)}

    named_by: str | None = None
    if path is None and env.get(CONFIG_ENV_VAR):
        path = _expand_path(env[CONFIG_ENV_VAR], Path.cwd(), _home(env))
        named_by = CONFIG_ENV_VAR
    elif path is not None:
        named_by = "the caller"
    config_path = default_config_path(env) if path is None else path

    loaded = _read_toml(config_path, named_by=named_by)
    if loaded is not None:
        doc, text = loaded
        for key, raw in doc.items():
            _apply(settings, key, raw, _file_origin(config_path, key, text, _home(env)))

    for key, var in ENV_VARS.items():
        value = env.get(var, "")
        if value:
            origin = _Origin(
                where=f"environment variable {var}",
                fix=f"Fix the value or unset {var}.",
                base_dir=Path.cwd(),
                home=_home(env),
                context={"env_var": var, "key": key},
            )
            _apply(settings, key, value, origin)

    return Config(**settings)


def save_config_values(path: Path, values: Mapping[str, str]) -> None:
    """Set ``values`` (config key -> string) in the TOML file at ``path``.

    Other keys and comments are kept when possible. Values are validated as
    :func:`load_config` would, so a save never introduces an invalid value.
    An empty ``token`` clears the stored token. The file is replaced
    atomically and ends up with mode 0600 because it may hold a token.
    """
    for key, value in values.items():
        origin = _Origin(
            where=f"{path}: key {key!r}",
            fix="Pass a valid value.",
            base_dir=path.parent,
            home=_home(os.environ),
            context={"file": str(path), "key": key},
        )
        _apply({}, key, value, origin)

    loaded = _read_toml(path, named_by=None)
    old_doc, old_text = loaded if loaded is not None else ({}, "")
    wanted = {**old_doc, **values}
    new_text = _update_lines(old_text, values)
    if _parses_to(new_text, wanted):
        atomic_write_private(path, new_text.encode("utf-8"))
        return

    # Line editing failed (e.g. a multi-line string); rewrite the file instead,
    # which is only lossless when every value is a plain string.
    if any(not isinstance(v, str) for v in wanted.values()):
        raise ConfigError(
            f"{path}: cannot update the file automatically because it contains tables or "
            "non-string values. Fix the file so that it only has 'key = \"value\"' lines.",
            file=str(path),
        )
    lines = [f"{key} = {_toml_string(value)}\n" for key, value in wanted.items()]
    atomic_write_private(path, "".join(lines).encode("utf-8"))


# --- reading -----------------------------------------------------------------


def _read_toml(path: Path, *, named_by: str | None) -> tuple[dict[str, Any], str] | None:
    """Parse the file; ``None`` if it does not exist and nobody asked for it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if named_by is None:
            return None
        raise ConfigError(
            f"{path}: config file not found (named by {named_by}). "
            "Create the file or correct the path.",
            file=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read config file: {exc.strerror}. "
            "Check that the path is a readable file.",
            file=str(path),
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: config file is not valid UTF-8 (byte {exc.start}). Save it as UTF-8.",
            file=str(path),
        ) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION_RE.match(str(exc))
        if match is None:  # e.g. "at end of document"
            raise ConfigError(
                f"{path}: invalid TOML: {exc}. Fix the syntax.", file=str(path)
            ) from None
        line, col = int(match["line"]), int(match["col"])
        raise ConfigError(
            f"{path}:{line}:{col}: invalid TOML: {match['msg']}. "
            f"Fix the syntax at line {line}, column {col}.",
            file=str(path),
            line=line,
            column=col,
        ) from None


def _file_origin(path: Path, key: str, text: str, home: Path) -> _Origin:
    line = _key_line(text, key)
    context: dict[str, object] = {"file": str(path), "key": key}
    if line is not None:
        context["line"] = line
    location = f"{path}:{line}" if line is not None else str(path)
    return _Origin(
        where=f"{location}: key {key!r}",
        fix="Fix the value or remove the key to use the default.",
        base_dir=path.parent,
        home=home,
        context=context,
    )


def _key_line(text: str, key: str) -> int | None:
    """Best-effort line number of a top-level key or table; tomllib has none."""
    k = re.escape(key)
    pattern = re.compile(rf"""^\s*\[*\s*(?:{k}|"{k}"|'{k}')\s*[=.\]]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _apply(settings: _Settings, key: str, raw: object, origin: _Origin) -> None:
    """Validate one raw value and store its typed form in ``settings``."""
    if key not in ENV_VARS:
        close = difflib.get_close_matches(key, _KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise origin.error(
            f"unknown key{hint}",
            f"Valid keys: {', '.join(sorted(_KEYS))}.",
        )
    if not isinstance(raw, str):
        example = "INFO" if key == "log_level" else "..."
        raise origin.error(
            f"must be a string, got {_toml_type(raw)}",
            f'Quote the value, e.g. {key} = "{example}".',
        )

    if key == "state_dir":
        if not raw.strip():
            raise origin.error("must not be empty")
        settings["state_dir"] = _expand_path(raw, origin.base_dir, origin.home)
    elif key == "ca_file":
        if not raw.strip():
            raise origin.error("must not be empty")
        settings["ca_file"] = _expand_path(raw, origin.base_dir, origin.home)
    elif key == "log_level":
        level = raw.strip().upper()
        if level not in LOG_LEVELS:
            raise origin.error(
                f"invalid log level {raw!r}; expected one of {', '.join(LOG_LEVELS)}"
            )
        settings["log_level"] = level
    elif key == "log_format":
        fmt = raw.strip().lower()
        if fmt not in LOG_FORMATS:
            raise origin.error(
                f"invalid log format {raw!r}; expected one of {', '.join(LOG_FORMATS)}"
            )
        settings["log_format"] = fmt
    elif key in ("api_url", "pce_url", "clmc_url"):
        settings[key] = _check_url(raw, origin)  # type: ignore[literal-required]
    else:  # token
        # Never echo the value: it is a credential, and errors get logged.
        token = raw.strip()
        if token and not _BEARER_TOKEN_RE.fullmatch(token):
            raise origin.error(
                "token contains characters that are not allowed in a bearer token "
                "(value not shown)",
                "Copy the token again exactly as it was issued.",
            )
        settings["token"] = token or None


def _check_url(raw: str, origin: _Origin) -> str:
    url = raw.strip()
    problem = f"invalid API URL {raw!r}; expected http(s)://host[:port][/path]"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise origin.error(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise origin.error(problem)
    return url


def _expand_path(raw: str, base_dir: Path, home: Path) -> Path:
    """Expand ``~`` and make relative paths absolute against ``base_dir``."""
    value = raw.strip()
    # ``home`` comes from the environment being loaded, not necessarily ours.
    tilde = value == "~" or value.startswith("~/")
    path = home / value[2:] if tilde else Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _xdg_dir(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    value = environ.get(var, "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(value) if value and os.path.isabs(value) else _home(environ) / fallback
    return base / "flame"


def _toml_type(value: object) -> str:
    names: list[tuple[type, str]] = [
        (bool, "a boolean"),  # before int: bool is a subclass of int
        (int, "an integer"),
        (float, "a float"),
        (dict, "a table"),
        (list, "an array"),
    ]
    for cls, name in names:
        if isinstance(value, cls):
            return name
    return "a date/time"


# --- writing -----------------------------------------------------------------

_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(value: str) -> str:
    """Encode ``value`` as a TOML basic string."""
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:  # TOML forbids raw control chars
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _update_lines(text: str, values: Mapping[str, str]) -> str:
    """Replace top-level ``key = ...`` lines in place, append missing keys."""
    pending = dict(values)
    out: list[str] = []
    first_table: int | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if first_table is None and stripped.startswith("["):
            first_table = len(out)
        if first_table is None:
            key = next((k for k in pending if _assigns(stripped, k)), None)
            if key is not None:
                out.append(f"{key} = {_toml_string(pending.pop(key))}\n")
                continue
        out.append(line)
    new = [f"{key} = {_toml_string(value)}\n" for key, value in pending.items()]
    # Top-level keys must come before the first [table] to stay top-level.
    at = len(out) if first_table is None else first_table
    if at > 0 and not out[at - 1].endswith("\n"):
        out[at - 1] += "\n"
    out[at:at] = new
    return "".join(out)


def _assigns(line: str, key: str) -> bool:
    k = re.escape(key)
    return re.match(rf"""(?:{k}|"{k}"|'{k}')\s*=""", line) is not None


def _parses_to(text: str, expected: Mapping[str, Any]) -> bool:
    try:
        return tomllib.loads(text) == dict(expected)
    except tomllib.TOMLDecodeError:
        return False
