"""InfluxQL (InfluxDB 1.x query language) compiled to SQL on a CLMC store (CLMC-11, CLMC-16).

    execute(store, text, db, epoch, params)          -> {"results": [...]}, InfluxDB's body
    execute_chunked(..., chunk_size=N)               -> iterator of bodies (chunked=true)
    parse(text[, params]) / render(statement)        -> typed AST (`ast`) and back

Errors (see `errors`): ParseError -> HTTP 400 `{"error": ...}`; a failing statement becomes
`{"statement_id": N, "error": ...}` inside the 200 body. Modules: lexer, parser, render (text);
conditions, fields, select, fill, transforms, meta (compilation and running); dialect (the only
SQL that differs between stores); rows, engine (result bodies).
"""

from flame.clmc.influxql.engine import DEFAULT_CHUNK_SIZE, execute, execute_chunked
from flame.clmc.influxql.errors import InfluxQLError, ParseError, StatementError
from flame.clmc.influxql.parser import parse
from flame.clmc.influxql.render import render

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "InfluxQLError",
    "ParseError",
    "StatementError",
    "execute",
    "execute_chunked",
    "parse",
    "render",
]
