"""The regex check of InfluxQL's `=~` and `!~` (`flame.clmc.influxql.parser`): what InfluxDB's
Go regexp (RE2) refuses is refused, and a pattern must compile with Python's `re`, as written or
after rewriting RE2-only syntax."""

from __future__ import annotations

import re
import warnings

__all__ = ["regex_problem"]

# Go's regexp (RE2) syntax Python's `re` lacks, rewritten before a check with `re` ...
_GO_ONLY = re.compile(r"\\[pP](?:\{[^}]*\}|[A-Za-z])|\\Q.*?(?:\\E|$)|\\z|\\C", re.DOTALL)
# ... and what `re` accepts but RE2 refuses: look-around, atomic groups, back-references,
# possessive quantifiers; and repeat counts over 1000.
_PERL_ONLY = re.compile(r"\(\?(?:<?[=!]|>|P=|#)|\\[1-9]|[*+?}]\+")
_REPEAT = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def regex_problem(pattern: str, *, python: bool = True) -> str | None:
    """Why `pattern` is no valid regex (None if it is). Either way what RE2 (InfluxDB's Go
    regexp) refuses is refused, as far as Python can tell it; then it must compile with Python's
    `re` as written when Python runs it (`python`), or after rewriting RE2-only syntax when the
    store's RE2 does (whose own errors the store reports)."""
    plain = _strip_escaped_backslashes(pattern)
    if _PERL_ONLY.search(plain):
        return f"invalid or unsupported Perl syntax: `{pattern}`"
    for m in _REPEAT.finditer(plain):
        if any(g and int(g) > 1000 for g in m.groups()):
            return f"invalid repeat count: `{m.group(0)}`"
    text = pattern if python else _GO_ONLY.sub(_go_to_python, pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning for `[[`: valid in RE2
            re.compile(text)
    except re.error as exc:
        return str(exc.msg) if exc.msg else str(exc)
    except (RecursionError, OverflowError, MemoryError, ValueError) as exc:
        return f"regexp too complex ({type(exc).__name__})"
    return None


def _strip_escaped_backslashes(pattern: str) -> str:
    return pattern.replace("\\\\", "")


def _go_to_python(m: re.Match[str]) -> str:
    text = m.group(0)
    if text.startswith("\\Q"):
        body = text[2:]
        return re.escape(body[:-2] if body.endswith("\\E") else body)
    if text == "\\z":
        return "\\Z"
    return "."
