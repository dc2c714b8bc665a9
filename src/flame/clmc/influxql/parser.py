"""Recursive-descent InfluxQL parser producing `ast` nodes; errors name the position like
InfluxDB's (`found X, expected Y at line 1, char 15`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.errors import ParseError
from flame.clmc.influxql.lexer import Scanner, T, Token
from flame.clmc.influxql.regexp import regex_problem

__all__ = ["parse", "parse_expr", "regex_problem"]

_R = TypeVar("_R")

_STATEMENT_STARTS = "SELECT, DELETE, SHOW, CREATE, DROP, EXPLAIN, GRANT, REVOKE, ALTER, SET, KILL"
_SHOW_WHAT = ("CONTINUOUS, DATABASES, DIAGNOSTICS, FIELD, GRANTS, MEASUREMENT, MEASUREMENTS, "
              "QUERIES, RETENTION, SERIES, SHARD, SHARDS, STATS, SUBSCRIPTIONS, TAG, USERS")  # fmt: skip
_EXPR_START = "identifier, string, number, bool"
_TYPE_HINTS = frozenset({"float", "integer", "unsigned", "string", "boolean", "field", "tag"})
_OPS = {op.value: op for op in A.Op if op not in (A.Op.AND, A.Op.OR)} | {"<>": A.Op.NEQ}
MAX_DEPTH = 100  # nesting limit so hostile input cannot exhaust the stack
# Depth limit of an expression tree, whatever makes it deep: chains of arithmetic or
# comparisons are left-deep (a 20,000-term sum would be 20,000 levels for every recursive pass
# over the tree), and the renderer writes every level in parentheses, so this is also what
# keeps `parse(render(tree))` possible. AND and OR chains are built balanced: thousands of OR
# terms stay a few levels deep.
MAX_TREE_DEPTH = MAX_DEPTH
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def parse(text: str, params: Mapping[str, object] | None = None) -> list[A.Statement]:
    """Parse `;`-separated statements; raises ParseError.

    With `params`, `$name` is replaced by the value's literal (bound, never spliced into text);
    without, it stays a `BoundParameter`."""
    return _Parser(text, params).statements()


def parse_expr(text: str) -> A.Expr:
    p = _Parser(text)
    expr = p.expr()
    p.expect_eof()
    return expr


class _Parser:
    def __init__(self, text: str, params: Mapping[str, object] | None = None) -> None:
        self.params = params
        self.sc = Scanner(text)
        self.pos = 0
        self.depth = 0
        self._peeked: Token | None = None
        self._peeked_at = -1

    # --- tokens -----------------------------------------------------------------------------

    def peek(self) -> Token:
        if self._peeked is None or self._peeked_at != self.pos:
            self._peeked = self.sc.scan(self.pos)
            self._peeked_at = self.pos
        return self._peeked

    def next(self) -> Token:
        tok = self.peek()
        self.pos = tok.end
        return tok

    def fail(self, tok: Token, expected: str) -> ParseError:
        found = tok.describe()
        return self.sc.error(tok.pos, f"found {found}, expected {expected}", found, expected)

    def is_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind is T.KEYWORD and tok.text in words

    def accept_kw(self, word: str) -> bool:
        if self.is_kw(word):
            self.next()
            return True
        return False

    def expect_kw(self, *words: str) -> str:
        tok = self.next()
        if tok.kind is T.KEYWORD and tok.text in words:
            return tok.text
        raise self.fail(tok, ", ".join(words))

    def is_op(self, op: str) -> bool:
        tok = self.peek()
        return tok.kind is T.OP and tok.text == op

    def accept_op(self, op: str) -> bool:
        if self.is_op(op):
            self.next()
            return True
        return False

    def expect_op(self, op: str) -> None:
        tok = self.next()
        if not (tok.kind is T.OP and tok.text == op):
            raise self.fail(tok, op)

    def ident(self) -> str:
        tok = self.next()
        if tok.kind is T.IDENT:
            return tok.text
        raise self.fail(tok, "identifier")

    def int_value(self) -> int:
        tok = self.next()
        if tok.kind is T.INTEGER and isinstance(tok.value, int):
            return tok.value
        raise self.fail(tok, "integer")

    def duration(self, *, placed: bool = True) -> int:
        tok = self.next()
        if tok.kind is T.DURATION and isinstance(tok.value, int):
            self._check_duration(tok, placed=placed)
            return tok.value
        if tok.kind is T.KEYWORD and tok.text == "INF":
            return 0
        if tok.kind in (T.INTEGER, T.NUMBER) and self.sc.text[tok.end : tok.end + 1].isalpha():
            raise self._unplaced(tok, "invalid duration", "duration")  # `1x`: InfluxDB's wording
        raise self.fail(tok, "duration")

    def _check_duration(self, tok: Token, *, placed: bool) -> None:
        """InfluxDB refuses a duration over int64 nanoseconds (about 292 years)."""
        if isinstance(tok.value, int) and tok.value > _INT64_MAX:
            detail = f"overflowed duration {tok.text}: choose a smaller duration or INF"
            if placed:
                raise self.sc.error(tok.pos, detail, tok.text, "duration")
            raise self._unplaced(tok, detail, "duration")

    def _unplaced(self, tok: Token, detail: str, expected: str) -> ParseError:
        """An error InfluxDB words without a position (ours keeps it in the context)."""
        line, char = self.sc.location(tok.pos)
        return ParseError(detail, line=line, char=char, found=tok.describe(), expected=expected,
                          show_position=False)  # fmt: skip

    def regex(self, *, python: bool = True) -> str | None:
        """A `/.../` regex here, or None. InfluxDB refuses a regex that does not compile; so do
        we: with Python's `re` where Python runs it (`python`: FROM, GROUP BY, SHOW ...), else
        (WHERE, run by the store's RE2) by RE2's rules as far as `re` can tell them."""
        tok = self.sc.scan_regex(self.pos)
        if tok is None:
            return None
        problem = regex_problem(tok.text, python=python)
        if problem is not None:
            # InfluxDB places it one char before the opening slash, like a string
            raise self.sc.error(
                max(tok.pos - 1, 0), f"error parsing regexp: {problem}", tok.describe(), "regex"
            )
        self.pos = tok.end
        return tok.text

    def expect_eof(self) -> None:
        tok = self.peek()
        if tok.kind is not T.EOF:
            raise self.fail(tok, "EOF")

    def _nested(self, fn: Callable[[], _R]) -> _R:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.sc.error(self.pos, "expression nested too deeply", "", "")
        try:
            return fn()
        finally:
            self.depth -= 1

    # --- statements -------------------------------------------------------------------------

    def statements(self) -> list[A.Statement]:
        out: list[A.Statement] = []
        while True:
            while self.accept_op(";"):
                pass
            if self.peek().kind is T.EOF:
                return out
            out.append(self.statement())
            tok = self.peek()
            if tok.kind is T.EOF:
                return out
            if not self.is_op(";"):
                raise self.fail(tok, ";")

    def statement(self) -> A.Statement:
        tok = self.next()
        if tok.kind is T.KEYWORD:
            if tok.text == "SELECT":
                return self.select()
            if tok.text == "SHOW":
                return self.show()
            if tok.text == "CREATE":
                return self.create()
            if tok.text == "DROP":
                return self.drop()
            if tok.text == "DELETE":
                return self.delete()
        raise self.fail(tok, _STATEMENT_STARTS)

    def select(self) -> A.SelectStatement:
        fields = [self.field()]
        while self.accept_op(","):
            fields.append(self.field())
        self.expect_kw("FROM")
        sources = self.sources()
        condition = self.where()
        dims: list[A.Dimension] = []
        if self.accept_kw("GROUP"):
            self.expect_kw("BY")
            dims.append(self.dimension())
            while self.accept_op(","):
                dims.append(self.dimension())
        fill = self.fill()
        descending = False
        if self.accept_kw("ORDER"):
            self.expect_kw("BY")
            tok = self.next()
            if not (tok.kind is T.IDENT and tok.text.lower() == "time"):
                raise self._unplaced(tok, "only ORDER BY time supported at this time", "time")
            if self.is_kw("ASC", "DESC"):
                descending = self.next().text == "DESC"
        limit, offset = self.limit_offset("LIMIT", "OFFSET")
        slimit, soffset = self.limit_offset("SLIMIT", "SOFFSET")
        tz = None
        tok = self.peek()
        if tok.kind is T.IDENT and tok.text.lower() == "tz":
            self.next()
            self.expect_op("(")
            arg = self.next()
            if arg.kind is not T.STRING:
                raise self.fail(arg, "string")
            tz = arg.text
            self.expect_op(")")
        return A.SelectStatement(
            tuple(fields), sources, condition, tuple(dims), fill, descending,
            limit, offset, slimit, soffset, tz,
        )  # fmt: skip

    def field(self) -> A.Field:
        tok = self.peek()
        if tok.kind is T.OP and tok.text == "*":
            self.next()
            expr: A.Expr = A.Wildcard(self.type_hint(wildcard=True))
        else:
            expr = self.expr()
        alias = None
        if self.accept_kw("AS"):
            alias = self.ident()
        return A.Field(expr, alias)

    def type_hint(self, *, wildcard: bool = False) -> str | None:
        if not self.accept_op("::"):
            return None
        tok = self.next()
        hint = tok.text.lower() if tok.kind in (T.IDENT, T.KEYWORD) else ""
        allowed = ("field", "tag") if wildcard else _TYPE_HINTS
        if hint not in allowed:
            raise self.fail(tok, ", ".join(sorted(allowed)))
        return hint

    def sources(self) -> tuple[A.Measurement, ...]:
        out = [self.source()]
        while self.accept_op(","):
            out.append(self.source())
        return tuple(out)

    def source(self) -> A.Measurement:
        rx = self.regex()
        if rx is not None:
            return A.Measurement(regex=rx)
        parts: list[str | None] = [self.ident()]
        while len(parts) < 3 and self.accept_op("."):
            rx = self.regex()
            if rx is None and self.is_op("."):  # db..m: default retention policy
                parts.append(None)
                continue
            if rx is not None:
                if len(parts) == 1:
                    return A.Measurement(regex=rx, rp=parts[0])
                return A.Measurement(regex=rx, database=parts[0], rp=parts[1])
            parts.append(self.ident())
        if len(parts) == 1:
            return A.Measurement(name=parts[0])
        if len(parts) == 2:
            return A.Measurement(name=parts[1], rp=parts[0])
        return A.Measurement(name=parts[2], database=parts[0], rp=parts[1])

    def where(self) -> A.Expr | None:
        if self.accept_kw("WHERE"):
            return self.expr()
        return None

    def dimension(self) -> A.Dimension:
        rx = self.regex()
        if rx is not None:
            return A.RegexLiteral(rx)
        if self.accept_op("*"):
            return A.Wildcard()
        tok = self.next()
        if tok.kind is not T.IDENT:
            raise self.fail(tok, _EXPR_START)
        if tok.text.lower() == "time" and self.is_op("("):
            self.next()
            interval = self.duration(placed=False)
            offset = 0
            if self.accept_op(","):
                neg = self.accept_op("-")
                if self.peek().kind is T.IDENT and self.peek().text.lower() == "now":
                    raise self.fail(self.peek(), "duration")
                offset = self.duration(placed=False)
                offset = -offset if neg else offset
            self.expect_op(")")
            return A.GroupByTime(interval, offset)
        return A.VarRef(tok.text, self.type_hint())

    def fill(self) -> A.Fill:
        tok = self.peek()
        if not (tok.kind is T.IDENT and tok.text.lower() == "fill"):
            return A.Fill()
        self.next()
        self.expect_op("(")
        tok = self.next()
        neg = False
        if tok.kind is T.OP and tok.text == "-":
            neg, tok = True, self.next()
        if tok.kind in (T.INTEGER, T.NUMBER) and tok.value is not None:
            fill = A.Fill(A.FillMode.NUMBER, -tok.value if neg else tok.value)
        elif (
            not neg
            and tok.kind is T.IDENT
            and tok.text.lower() in ("null", "none", "previous", "linear")
        ):
            fill = A.Fill(A.FillMode(tok.text.lower()))
        else:
            line, char = self.sc.location(tok.pos)
            # InfluxDB's wording, which carries no position; ours keeps it in the context
            raise ParseError("expected number argument in fill()", line=line, char=char,
                             found=tok.describe(), expected="null, none, previous, linear, number",
                             show_position=False)  # fmt: skip
        self.expect_op(")")
        return fill

    def limit_offset(self, lim_kw: str, off_kw: str) -> tuple[int, int]:
        # As InfluxDB (ParseInt's result despite its error): a huge count means "all".
        limit = min(self.int_value(), _INT64_MAX) if self.accept_kw(lim_kw) else 0
        offset = min(self.int_value(), _INT64_MAX) if self.accept_kw(off_kw) else 0
        return limit, offset

    def on_database(self) -> str | None:
        return self.ident() if self.accept_kw("ON") else None

    def from_sources(self) -> tuple[A.Measurement, ...]:
        return self.sources() if self.accept_kw("FROM") else ()

    def show(self) -> A.Statement:
        word = self.expect_kw(*(w.strip() for w in _SHOW_WHAT.split(",")))
        if word == "DATABASES":
            return A.ShowDatabases()
        if word == "MEASUREMENTS":
            db = self.on_database()
            regex = name = None
            if self.accept_kw("WITH"):
                self.expect_kw("MEASUREMENT")
                tok = self.next()
                if tok.kind is T.OP and tok.text == "=~":
                    regex = self.regex()
                    if regex is None:
                        raise self.fail(self.peek(), "regex")
                elif tok.kind is T.OP and tok.text == "=":
                    name = self.ident()
                else:
                    raise self.fail(tok, "=, =~")
            cond = self.where()
            lim, off = self.limit_offset("LIMIT", "OFFSET")
            return A.ShowMeasurements(db, regex, name, cond, lim, off)
        if word == "TAG":
            kind = self.expect_kw("KEYS", "VALUES")
            db = self.on_database()
            sources = self.from_sources()
            if kind == "KEYS":
                cond = self.where()
                lim, off = self.limit_offset("LIMIT", "OFFSET")
                return A.ShowTagKeys(db, sources, cond, lim, off)
            return self.show_tag_values(db, sources)
        if word == "FIELD":
            self.expect_kw("KEYS")
            db = self.on_database()
            sources = self.from_sources()
            lim, off = self.limit_offset("LIMIT", "OFFSET")
            return A.ShowFieldKeys(db, sources, lim, off)
        if word == "SERIES":
            db = self.on_database()
            sources = self.from_sources()
            cond = self.where()
            lim, off = self.limit_offset("LIMIT", "OFFSET")
            return A.ShowSeries(db, sources, cond, lim, off)
        if word == "RETENTION":
            self.expect_kw("POLICIES")
            return A.ShowRetentionPolicies(self.on_database())
        raise self.sc.error(self.pos, f"SHOW {word} is not supported", word, "")

    def show_tag_values(
        self, db: str | None, sources: tuple[A.Measurement, ...]
    ) -> A.ShowTagValues:
        self.expect_kw("WITH")
        self.expect_kw("KEY")
        tok = self.next()
        keys: tuple[str, ...] = ()
        regex = None
        negate = False
        if tok.kind is T.KEYWORD and tok.text == "IN":
            self.expect_op("(")
            names = [self.ident()]
            while self.accept_op(","):
                names.append(self.ident())
            self.expect_op(")")
            keys = tuple(names)
        elif tok.kind is T.OP and tok.text in ("=", "!=", "<>"):
            keys, negate = (self.ident(),), tok.text != "="
        elif tok.kind is T.OP and tok.text in ("=~", "!~"):
            regex, negate = self.regex(), tok.text == "!~"
            if regex is None:
                raise self.fail(self.peek(), "regex")
        else:
            raise self.fail(tok, "=, !=, =~, !~, IN")
        cond = self.where()
        lim, off = self.limit_offset("LIMIT", "OFFSET")
        return A.ShowTagValues(keys, db, sources, regex, negate, cond, lim, off)

    def create(self) -> A.Statement:
        word = self.expect_kw("CONTINUOUS", "DATABASE", "RETENTION", "SUBSCRIPTION", "USER")
        if word == "DATABASE":
            name = self.ident()
            duration = rp = None
            if self.accept_kw("WITH"):
                seen = False
                while True:
                    if self.accept_kw("DURATION"):
                        duration = self.duration()
                    elif self.accept_kw("REPLICATION"):
                        self.int_value()
                    elif self.accept_kw("SHARD"):
                        self.expect_kw("DURATION")
                        self.duration()
                    elif self.accept_kw("NAME"):
                        rp = self.ident()
                    elif not seen:
                        raise self.fail(self.peek(), "DURATION, NAME, REPLICATION, SHARD")
                    else:
                        break
                    seen = True
            return A.CreateDatabase(name, duration, rp)
        if word == "RETENTION":
            self.expect_kw("POLICY")
            name = self.ident()
            self.expect_kw("ON")
            db = self.ident()
            self.expect_kw("DURATION")
            duration = self.duration()
            self.expect_kw("REPLICATION")
            replication = self.int_value()
            shard = 0
            if self.accept_kw("SHARD"):
                self.expect_kw("DURATION")
                shard = self.duration()
            default = self.accept_kw("DEFAULT")
            return A.CreateRetentionPolicy(name, db, duration, replication, shard, default)
        raise self.sc.error(self.pos, f"CREATE {word} is not supported", word, "")

    def drop(self) -> A.Statement:
        word = self.expect_kw("CONTINUOUS", "DATABASE", "MEASUREMENT", "RETENTION", "SERIES",
                              "SHARD", "SUBSCRIPTION", "USER")  # fmt: skip
        if word == "DATABASE":
            return A.DropDatabase(self.ident())
        if word == "MEASUREMENT":
            return A.DropMeasurement(self.ident())
        if word == "SERIES":
            sources = self.from_sources()
            cond = self.where()
            if not sources and cond is None:
                raise self.fail(self.peek(), "FROM, WHERE")
            return A.DropSeries(sources, cond)
        raise self.sc.error(self.pos, f"DROP {word} is not supported", word, "")

    def delete(self) -> A.Delete:
        sources = self.from_sources()
        cond = self.where()
        if not sources and cond is None:
            raise self.fail(self.peek(), "FROM, WHERE")
        return A.Delete(sources, cond)

    # --- expressions ------------------------------------------------------------------------

    def expr(self, min_prec: int = 1) -> A.Expr:
        start = self.sc.skip_space(self.pos) if self.depth == 0 else -1
        expr = self._nested(lambda: self._expr(min_prec))
        if start >= 0 and tree_depth(expr) > MAX_TREE_DEPTH:
            raise self.sc.error(
                start, f"expression too complex: more than {MAX_TREE_DEPTH} levels", "", ""
            )
        return expr

    def _op(self) -> A.Op | None:
        tok = self.peek()
        if tok.kind is T.KEYWORD and tok.text in ("AND", "OR"):
            return A.Op(tok.text)
        if tok.kind is T.OP:
            return _OPS.get(tok.text)
        return None

    def _expr(self, min_prec: int) -> A.Expr:
        lhs = self.unary()
        while True:
            op = self._op()
            if op is None or A.PRECEDENCE[op] < min_prec:
                return lhs
            self.next()
            if op in (A.Op.EQREGEX, A.Op.NEQREGEX):
                rx = self.regex(python=False)
                if rx is not None:
                    lhs = A.BinaryExpr(op, lhs, A.RegexLiteral(rx))
                    continue
                tok = self.peek()
                if tok.kind is not T.PARAM:
                    raise self.fail(tok, "regex")
                self.next()
                lhs = A.BinaryExpr(op, lhs, self.bind(tok, regex=True))
                continue
            if op in (A.Op.AND, A.Op.OR):
                # A run of one logical operator is associative: build it balanced (depth
                # log2 n), not left-deep, so a WHERE of thousands of ORs stays shallow.
                terms = [lhs, self.expr(A.PRECEDENCE[op] + 1)]
                while self._op() is op:
                    self.next()
                    terms.append(self.expr(A.PRECEDENCE[op] + 1))
                lhs = _balanced(op, terms)
                continue
            rhs = self.expr(A.PRECEDENCE[op] + 1)
            lhs = A.BinaryExpr(op, lhs, rhs)

    def unary(self) -> A.Expr:
        tok = self.next()
        kind = tok.kind
        if kind is T.OP:
            if tok.text == "(":
                inner = self.expr()
                self.expect_op(")")
                return inner
            if tok.text == "-":
                nxt = self.peek()
                if nxt.kind is T.INTEGER and isinstance(nxt.value, int):
                    self.next()
                    if nxt.value > _INT64_MAX + 1:
                        raise self._unplaced(
                            nxt, f"constant -{nxt.text} underflows int64", "integer"
                        )
                    return A.IntegerLiteral(-nxt.value)
                if nxt.kind is T.NUMBER and isinstance(nxt.value, float):
                    self.next()
                    return A.NumberLiteral(-nxt.value)
                if nxt.kind is T.DURATION and isinstance(nxt.value, int):
                    self.next()
                    self._check_duration(nxt, placed=False)
                    return A.DurationLiteral(-nxt.value)
                operand = self._nested(self.unary)
                return A.BinaryExpr(A.Op.MUL, A.IntegerLiteral(-1), operand)
            raise self.fail(tok, _EXPR_START)
        if kind is T.IDENT:
            if self.is_op("("):
                return self.call(tok.text.lower())
            return A.VarRef(tok.text, self.type_hint())
        if kind is T.KEYWORD:
            if tok.text in ("TRUE", "FALSE"):
                return A.BooleanLiteral(tok.text == "TRUE")
            if tok.text == "DISTINCT":
                if self.is_op("("):
                    return self.call("distinct")
                return A.Call("distinct", (A.VarRef(self.ident()),))
            raise self.fail(tok, _EXPR_START)
        if kind is T.STRING:
            return A.StringLiteral(tok.text)
        if kind is T.INTEGER and isinstance(tok.value, int):
            if tok.value > _UINT64_MAX:
                raise self.sc.error(tok.pos, "unable to parse integer", tok.text, "integer")
            return A.IntegerLiteral(tok.value)
        if kind is T.NUMBER and isinstance(tok.value, float):
            return A.NumberLiteral(tok.value)
        if kind is T.DURATION and isinstance(tok.value, int):
            self._check_duration(tok, placed=False)
            return A.DurationLiteral(tok.value)
        if kind is T.PARAM:
            return self.bind(tok)
        raise self.fail(tok, _EXPR_START)

    def bind(self, tok: Token, *, regex: bool = False) -> A.Expr:
        if self.params is None:
            return A.BoundParameter(tok.text)
        if tok.text not in self.params:
            line, char = self.sc.location(tok.pos)
            raise ParseError(
                f"missing parameter: {tok.text}",
                line=line,
                char=char,
                found=tok.describe(),
                expected="parameter",
                show_position=False,
            )
        value = self.params[tok.text]
        if isinstance(value, dict) and set(value) == {"regex"} and isinstance(value["regex"], str):
            if regex:
                return A.RegexLiteral(value["regex"])
            raise self.fail(tok, _EXPR_START)
        if regex:  # as InfluxDB 1.6: a plain value is no regex
            found = str(value).lower() if isinstance(value, bool) else str(value)
            raise self.sc.error(tok.pos, f"found {found}, expected regex", found, "regex")
        if isinstance(value, bool):
            return A.BooleanLiteral(value)
        if isinstance(value, int):
            return A.IntegerLiteral(value)
        if isinstance(value, float):
            return A.NumberLiteral(value)
        if isinstance(value, str):
            return A.StringLiteral(value)
        raise self.sc.error(
            tok.pos,
            f"unsupported parameter type for {tok.text}",
            tok.describe(),
            "string, number, bool",
        )

    def call(self, name: str) -> A.Call:
        self.expect_op("(")
        args: list[A.Expr] = []
        while True:
            rx = self.regex()  # before peeking: `/*` must not be taken for a comment
            if rx is not None:
                args.append(A.RegexLiteral(rx))
            elif not args and self.accept_op(")"):
                break
            elif self.accept_op("*"):
                args.append(A.Wildcard())
            else:
                args.append(self.expr())
            if self.accept_op(")"):
                break
            if not self.accept_op(","):
                raise self.fail(self.peek(), ")")
        return A.Call(name, tuple(args))


def _balanced(op: A.Op, terms: list[A.Expr]) -> A.Expr:
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return A.BinaryExpr(op, _balanced(op, terms[:mid]), _balanced(op, terms[mid:]))


def tree_depth(expr: A.Expr) -> int:
    """Levels of an expression tree, counted without recursion (the tree may be deep)."""
    deepest = 0
    stack: list[tuple[A.Expr, int]] = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, A.BinaryExpr):
            stack.append((node.lhs, depth + 1))
            stack.append((node.rhs, depth + 1))
        elif isinstance(node, A.Call):
            stack.extend((arg, depth + 1) for arg in node.args)
    return deepest
