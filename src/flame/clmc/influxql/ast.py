"""Typed InfluxQL syntax tree: frozen dataclasses, compared by value.

Parentheses are not kept: the renderer parenthesises every nested binary expression, so
`parse(render(tree)) == tree` holds for any tree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# --- expressions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VarRef:
    name: str
    type_hint: str | None = None  # `value::float`, `host::tag`


@dataclass(frozen=True, slots=True)
class Wildcard:
    kind: str | None = None  # `*::field`, `*::tag`


@dataclass(frozen=True, slots=True)
class IntegerLiteral:
    value: int


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float


@dataclass(frozen=True, slots=True)
class StringLiteral:
    value: str


@dataclass(frozen=True, slots=True)
class BooleanLiteral:
    value: bool


@dataclass(frozen=True, slots=True)
class DurationLiteral:
    ns: int


@dataclass(frozen=True, slots=True)
class RegexLiteral:
    pattern: str


@dataclass(frozen=True, slots=True)
class BoundParameter:
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # lower case
    args: tuple[Expr, ...] = ()


class Op(enum.StrEnum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    MOD = "%"
    BITAND = "&"
    BITOR = "|"
    BITXOR = "^"
    EQ = "="
    NEQ = "!="
    LT = "<"
    LTE = "<="
    GT = ">"
    GTE = ">="
    EQREGEX = "=~"
    NEQREGEX = "!~"
    AND = "AND"
    OR = "OR"


# Binding power, as InfluxDB's parser: OR < AND < comparisons < + - | ^ < * / % &.
PRECEDENCE: dict[Op, int] = {
    Op.OR: 1,
    Op.AND: 2,
    **{op: 4 for op in (Op.EQ, Op.NEQ, Op.LT, Op.LTE, Op.GT, Op.GTE, Op.EQREGEX, Op.NEQREGEX)},
    **{op: 5 for op in (Op.ADD, Op.SUB, Op.BITOR, Op.BITXOR)},
    **{op: 6 for op in (Op.MUL, Op.DIV, Op.MOD, Op.BITAND)},
}
COMPARISONS = frozenset(op for op, p in PRECEDENCE.items() if p == 4)
ARITHMETIC = frozenset(op for op, p in PRECEDENCE.items() if p >= 5)


@dataclass(frozen=True, slots=True)
class BinaryExpr:
    op: Op
    lhs: Expr
    rhs: Expr


Literal = (
    IntegerLiteral | NumberLiteral | StringLiteral | BooleanLiteral | DurationLiteral | RegexLiteral
)
Expr = VarRef | Wildcard | Literal | BoundParameter | Call | BinaryExpr

# --- SELECT -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    expr: Expr
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str | None = None
    regex: str | None = None
    database: str | None = None
    rp: str | None = None


class FillMode(enum.StrEnum):
    NULL = "null"
    NONE = "none"
    PREVIOUS = "previous"
    LINEAR = "linear"
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class Fill:
    mode: FillMode = FillMode.NULL
    value: int | float | None = None


@dataclass(frozen=True, slots=True)
class GroupByTime:
    interval_ns: int
    offset_ns: int = 0


Dimension = GroupByTime | VarRef | Wildcard | RegexLiteral


@dataclass(frozen=True, slots=True)
class SelectStatement:
    fields: tuple[Field, ...]
    sources: tuple[Measurement, ...]
    condition: Expr | None = None
    dimensions: tuple[Dimension, ...] = ()
    fill: Fill = Fill()
    descending: bool = False
    limit: int = 0
    offset: int = 0
    slimit: int = 0
    soffset: int = 0
    tz: str | None = None


# --- meta statements --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShowDatabases:
    pass


@dataclass(frozen=True, slots=True)
class ShowMeasurements:
    database: str | None = None
    regex: str | None = None  # WITH MEASUREMENT =~ /re/
    name: str | None = None  # WITH MEASUREMENT = name
    condition: Expr | None = None
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ShowTagKeys:
    database: str | None = None
    sources: tuple[Measurement, ...] = ()
    condition: Expr | None = None
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ShowTagValues:
    keys: tuple[str, ...]  # WITH KEY = k / IN (k, ...)
    database: str | None = None
    sources: tuple[Measurement, ...] = ()
    key_regex: str | None = None  # WITH KEY =~ /re/
    negate: bool = False  # WITH KEY != k / !~ /re/
    condition: Expr | None = None
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ShowFieldKeys:
    database: str | None = None
    sources: tuple[Measurement, ...] = ()
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ShowSeries:
    database: str | None = None
    sources: tuple[Measurement, ...] = ()
    condition: Expr | None = None
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ShowRetentionPolicies:
    database: str | None = None


@dataclass(frozen=True, slots=True)
class CreateDatabase:
    name: str
    duration_ns: int | None = None  # WITH DURATION ...
    rp_name: str | None = None  # WITH ... NAME rp


@dataclass(frozen=True, slots=True)
class DropDatabase:
    name: str


@dataclass(frozen=True, slots=True)
class CreateRetentionPolicy:
    name: str
    database: str
    duration_ns: int
    replication: int = 1
    shard_duration_ns: int = 0
    default: bool = False


@dataclass(frozen=True, slots=True)
class DropMeasurement:
    name: str


@dataclass(frozen=True, slots=True)
class Delete:
    sources: tuple[Measurement, ...] = ()
    condition: Expr | None = None


@dataclass(frozen=True, slots=True)
class DropSeries:
    sources: tuple[Measurement, ...] = ()
    condition: Expr | None = None


Statement = (
    SelectStatement
    | ShowDatabases
    | ShowMeasurements
    | ShowTagKeys
    | ShowTagValues
    | ShowFieldKeys
    | ShowSeries
    | ShowRetentionPolicies
    | CreateDatabase
    | DropDatabase
    | CreateRetentionPolicy
    | DropMeasurement
    | Delete
    | DropSeries
)
