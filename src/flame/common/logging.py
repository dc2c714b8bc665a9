"""Logging setup shared by all FLAME components, with secret redaction.

Two output formats, one record per line::

    text: 2026-11-23T19:00:00.123Z INFO flame.sfemc: route added service=acme-cdn
    json: {"ts": "2026-11-23T19:00:00.123Z", "level": "INFO", "logger": "flame.sfemc",
           "msg": "route added", "service": "acme-cdn"}

Fields passed with ``logger.info(..., extra={...})`` become ``key=value``
pairs (text) or object members (json). Secrets are replaced by ``***`` twice
over: a filter rewrites the record itself (so handlers added by others, e.g.
pytest's, see the redacted version too) and the formatters scrub their final
line, which also covers values whose ``str()`` happens to contain a token.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from flame.common.auth import TOKEN_PREFIX
from flame.common.config import LOG_FORMATS, LOG_LEVELS

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "logging_spec",
    "redact_text",
    "setup_logging",
]

REDACTED = "***"
_SECRET_KEY_RE = re.compile(r"token|secret|password|authorization", re.IGNORECASE)
# At least 16 body characters: truncated tokens are still hidden, while the
# 8-character token ids shown in listings (e.g. "flm_Xy3_a9Qe") stay readable.
_TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")
# Everything a bare LogRecord has; whatever else a record carries came from ``extra``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # added in Python 3.12
}


# A PEM private key (issue 15: content certificate keys), whole or cut short.
_PEM_KEY_RE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)


def redact_text(text: str) -> str:
    """Replace anything that looks like a FLAME token or a PEM private key."""
    if "PRIVATE KEY-----" in text:
        text = _PEM_KEY_RE.sub(REDACTED, text)
    return _TOKEN_RE.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY_RE.search(key):
        return REDACTED
    # Build new containers: the caller's objects must not be modified.
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


class RedactingFilter(logging.Filter):
    """Rewrite a record so that neither its message nor its extras hold secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Bad %-args: leave the record alone and let the handler report it
            # through handleError() instead of raising into application code.
            pass
        else:
            record.msg, record.args = redact_text(message), ()
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(key, value))
        if record.exc_info and not record.exc_text:
            # Pre-render so the cached traceback text that formatters reuse is clean.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        # Quote only when needed to keep key=value pairs unambiguous.
        if value and not re.search(r'[\s"=\\]', value):
            return value
        return json.dumps(value)
    return json.dumps(value, default=str)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        for key, value in _extras(record).items():
            line += f" {key}={_text_value(value)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact_text(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extras, exc, stack."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # Never let an extra overwrite the fixed fields.
            doc[f"extra_{key}" if key in doc else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        # Token characters never need JSON escaping, so this keeps valid JSON.
        return redact_text(json.dumps(doc, default=str))


class _FlameHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging owns, so it can be replaced, not duplicated."""


_installed: tuple[str, str] = ("INFO", "text")


def logging_spec() -> tuple[str, str]:
    """The (level, format) setup_logging last installed: a spawned child process (an SR worker)
    passes it to its own setup_logging, so it logs like its parent, redaction included."""
    return _installed


def setup_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send log records to ``stream`` (default stderr) in ``fmt`` ("text"/"json").

    ``level`` applies to the ``flame`` loggers; other libraries only get
    through from WARNING up (or ``level``, if higher) to keep output useful.
    Calling it again replaces the previous configuration.
    """
    level_name = level.upper()
    if level_name not in LOG_LEVELS:
        raise ValueError(f"invalid log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"invalid log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    level_no = logging.getLevelNamesMapping()[level_name]
    global _installed  # noqa: PLW0603 - one process-wide logging setup, by design
    _installed = (level_name, fmt)

    handler = _FlameHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # On the handler, not a logger: logger filters skip records from child loggers.
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FlameHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(level_no, logging.WARNING))
    logging.getLogger("flame").setLevel(level_no)
