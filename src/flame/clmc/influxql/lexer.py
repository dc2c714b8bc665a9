"""InfluxQL scanner, driven by the parser: regexes (`/re/`) are only scanned where the grammar
allows one, as in InfluxDB, because `/` is also division."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flame.clmc.influxql.errors import ParseError


class T(enum.Enum):
    EOF = "EOF"
    IDENT = "identifier"
    KEYWORD = "keyword"
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    DURATION = "duration"
    REGEX = "regex"
    PARAM = "bound parameter"
    BADSTRING = "unterminated string"  # no rule accepts it: the parser reports it in context
    OP = "operator"


KEYWORDS = frozenset(
    [
        "ALL",
        "ALTER",
        "ANALYZE",
        "AND",
        "ANY",
        "AS",
        "ASC",
        "BEGIN",
        "BY",
        "CARDINALITY",
        "CREATE",
        "CONTINUOUS",
        "DATABASE",
        "DATABASES",
        "DEFAULT",
        "DELETE",
        "DESC",
        "DESTINATIONS",
        "DIAGNOSTICS",
        "DISTINCT",
        "DROP",
        "DURATION",
        "END",
        "EVERY",
        "EXACT",
        "EXPLAIN",
        "FALSE",
        "FIELD",
        "FOR",
        "FROM",
        "GRANT",
        "GRANTS",
        "GROUP",
        "GROUPS",
        "IN",
        "INF",
        "INSERT",
        "INTO",
        "KEY",
        "KEYS",
        "KILL",
        "LIMIT",
        "MEASUREMENT",
        "MEASUREMENTS",
        "NAME",
        "OFFSET",
        "ON",
        "OR",
        "ORDER",
        "PASSWORD",
        "POLICIES",
        "POLICY",
        "PRIVILEGES",
        "QUERIES",
        "QUERY",
        "READ",
        "REPLICATION",
        "RESAMPLE",
        "RETENTION",
        "REVOKE",
        "SELECT",
        "SERIES",
        "SET",
        "SHARD",
        "SHARDS",
        "SLIMIT",
        "SOFFSET",
        "STATS",
        "SHOW",
        "SUBSCRIPTION",
        "SUBSCRIPTIONS",
        "TAG",
        "TO",
        "TRUE",
        "USER",
        "USERS",
        "VALUES",
        "WHERE",
        "WITH",
        "WRITE",
    ]
)

DURATION_UNITS: dict[str, int] = {
    "ns": 1,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}

# Longest first so `ms` wins over `m`, `=~` over `=`.
_OPERATORS = ("::", "=~", "!~", "!=", "<>", "<=", ">=", "+", "-", "*", "/", "%", "&", "|", "^",
              "=", "<", ">", "(", ")", ",", ";", ".", ":")  # fmt: skip
_STRING_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: T
    text: str  # value: unquoted identifier/string, upper-case keyword, operator, source digits
    pos: int  # offset of the first character
    end: int  # offset after the last character
    value: int | float | None = None  # INTEGER, NUMBER, DURATION (ns)

    def describe(self) -> str:
        """How InfluxDB names a token in `found X`."""
        if self.kind is T.EOF:
            return "EOF"
        if self.kind is T.REGEX:
            return f"/{self.text}/"
        if self.kind is T.PARAM:
            return f"${self.text}"
        return self.text


# ASCII only, as InfluxDB: other characters need a quoted identifier
def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_ident_start(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z" or ch == "_"


def _is_ident_char(ch: str) -> bool:
    return _is_ident_start(ch) or _is_digit(ch)


class _Unterminated(Exception):
    def __init__(self, partial: str, end: int) -> None:
        super().__init__(partial)
        self.partial, self.end = partial, end


class Scanner:
    def __init__(self, text: str) -> None:
        self.text = text

    def location(self, pos: int) -> tuple[int, int]:
        """1-based line and char, as InfluxDB reports them: EOF one past the end, or where the
        trailing blanks begin."""
        past_end = pos >= len(self.text)
        if past_end:
            blanks = len(self.text.rstrip())
            if blanks < len(self.text):
                pos, past_end = blanks, False
        line = self.text.count("\n", 0, pos) + 1
        start = self.text.rfind("\n", 0, pos) + 1
        char = pos - start + 1
        return line, char + 1 if past_end else char

    def error(self, pos: int, detail: str, found: str = "", expected: str = "") -> ParseError:
        line, char = self.location(pos)
        return ParseError(detail, line=line, char=char, found=found, expected=expected)

    def skip_space(self, pos: int) -> int:
        text, n = self.text, len(self.text)
        while pos < n:
            ch = text[pos]
            if ch.isspace():
                pos += 1
            elif text.startswith("--", pos):
                nl = text.find("\n", pos)
                pos = n if nl < 0 else nl + 1
            elif text.startswith("/*", pos):
                close = text.find("*/", pos + 2)
                if close < 0:
                    raise self.error(pos, "found unterminated comment, expected */", "/*", "*/")
                pos = close + 2
            else:
                break
        return pos

    def scan(self, pos: int) -> Token:
        text = self.text
        pos = self.skip_space(pos)
        if pos >= len(text):
            return Token(T.EOF, "", pos, pos)
        ch = text[pos]
        if _is_ident_start(ch):
            end = pos + 1
            while end < len(text) and _is_ident_char(text[end]):
                end += 1
            word = text[pos:end]
            if word.upper() in KEYWORDS:
                return Token(T.KEYWORD, word.upper(), pos, end)
            return Token(T.IDENT, word, pos, end)
        if ch == '"':
            value, end = self._quoted(pos, '"')
            return Token(T.IDENT, value, pos, end)
        if ch == "'":
            try:
                value, end = self._quoted(pos, "'")
            except _Unterminated as bad:
                # InfluxDB names the partial text and the char before the quote
                return Token(T.BADSTRING, bad.partial, max(pos - 1, 0), bad.end)
            # InfluxDB places a string one char before its quote (pos only serves errors)
            return Token(T.STRING, value, max(pos - 1, 0), end)
        if _is_digit(ch) or (ch == "." and pos + 1 < len(text) and _is_digit(text[pos + 1])):
            return self._number(pos)
        if ch == "$":
            if pos + 1 < len(text) and text[pos + 1] == '"':
                value, end = self._quoted(pos + 1, '"')
                return Token(T.PARAM, value, pos, end)
            end = pos + 1
            while end < len(text) and _is_ident_char(text[end]):
                end += 1
            if end == pos + 1:
                raise self.error(pos, "found $, expected identifier", "$", "identifier")
            return Token(T.PARAM, text[pos + 1 : end], pos, end)
        for op in _OPERATORS:
            if text.startswith(op, pos):
                return Token(T.OP, op, pos, pos + len(op))
        raise self.error(pos, f"found {ch}, expected a valid token", ch, "valid token")

    def scan_regex(self, pos: int) -> Token | None:
        """A `/.../` regex at pos (after spaces), or None if none starts there."""
        # only blanks: `/*` here opens a regex, not a comment
        while pos < len(self.text) and self.text[pos].isspace():
            pos += 1
        text = self.text
        if pos >= len(text) or text[pos] != "/":
            return None
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text) and text[i + 1] == "/":
                out.append("/")
                i += 2
                continue
            if ch == "/":
                return Token(T.REGEX, "".join(out), pos, i + 1)
            if ch == "\n":
                break
            out.append(ch)
            i += 1
        raise self.error(pos, "found unterminated regex, expected /", "/", "/")

    def _quoted(self, pos: int, quote: str) -> tuple[str, int]:
        text = self.text
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            ch = text[i]
            if ch == quote:
                return "".join(out), i + 1
            if ch == "\\":
                nxt = text[i + 1 : i + 2]
                if nxt not in _STRING_ESCAPES:
                    raise self.error(i, f"bad escape \\{nxt}", "\\" + nxt, "valid escape")
                out.append(_STRING_ESCAPES[nxt])
                i += 2
                continue
            if ch == "\n":
                break
            out.append(ch)
            i += 1
        if quote == "'":
            raise _Unterminated("".join(out), i)
        raise self.error(pos, f"found unterminated identifier, expected {quote}", quote, quote)

    def _number(self, pos: int) -> Token:
        text, n = self.text, len(self.text)
        end = pos
        while end < n and _is_digit(text[end]):
            end += 1
        is_float = False
        if end < n and text[end] == "." and end + 1 < n and _is_digit(text[end + 1]):
            is_float = True
            end += 1
            while end < n and _is_digit(text[end]):
                end += 1
        digits = text[pos:end]
        unit = self._unit_at(end)
        if unit is None or is_float:
            if is_float:
                return Token(T.NUMBER, digits, pos, end, float(digits))
            return Token(T.INTEGER, digits, pos, end, int(digits))
        # Durations may chain: 1h30m.
        total = 0
        cur = pos
        while True:
            dend = cur
            while dend < n and _is_digit(text[dend]):
                dend += 1
            if dend == cur:
                break
            unit = self._unit_at(dend)
            if unit is None:
                raise self.error(
                    cur,
                    f"found {text[pos:dend]}, expected duration unit",
                    text[pos:dend],
                    "duration",
                )
            total += int(text[cur:dend]) * DURATION_UNITS[unit]
            cur = dend + len(unit)
        return Token(T.DURATION, text[pos:cur], pos, cur, total)

    def _unit_at(self, pos: int) -> str | None:
        text = self.text
        for unit in ("ns", "ms", "µ", "u", "s", "m", "h", "d", "w"):
            if text.startswith(unit, pos):
                after = pos + len(unit)
                # `10sx` is not a duration: the unit must end the word.
                nxt = text[after : after + 1]
                if nxt and _is_ident_char(nxt) and not _is_digit(nxt):
                    continue
                return unit
        return None
