"""The authorization matrix shared by each app's test: every route × every kind of caller.

A test writes its expectation as `{(method, path): {caller: status}}` for the callers in
`CALLERS`, and `assert_covers` fails when the app has a route the expectation does not list
(or the other way round), so a route added without a rule cannot go unnoticed even when it
declares a gate (the app itself refuses to build without one: `require_declared`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from flame.common.access import route_rules

CALLERS = ("none", "bad", "tenant_a", "tenant_b", "router", "operator")
# Well-formed but never issued: the "bad" caller.
BAD_TOKEN = "flm_" + "A" * 43

Expectation = Mapping[tuple[str, str], Mapping[str, int]]


def assert_covers(app: FastAPI, expected: Expectation) -> None:
    routes = {
        (method, path)
        for (method, path) in route_rules(app)
        if method != "HEAD"  # Starlette adds HEAD to every GET
    }
    missing = sorted(routes - set(expected))
    stale = sorted(set(expected) - routes)
    assert not missing, f"routes without an expected row in the authorization matrix: {missing}"
    assert not stale, f"rows for routes the app no longer has: {stale}"
    for key, row in expected.items():
        assert set(row) == set(CALLERS), f"{key}: give a status for each of {CALLERS}"


def headers(caller: str, tokens: Mapping[str, str]) -> dict[str, str]:
    if caller == "none":
        return {}
    token = BAD_TOKEN if caller == "bad" else tokens[caller]
    return {"Authorization": f"Bearer {token}"}


def row(
    *,
    a: int,
    b: int | None = None,
    router: int = 403,
    operator: int | None = None,
    anonymous: int = 401,
) -> dict[str, int]:
    """One row: tenant A's status `a`, tenant B's (default = A's), the router's, the
    operator's (default = A's); no token and a bad token get `anonymous` (401)."""
    return {
        "none": anonymous,
        "bad": anonymous,
        "tenant_a": a,
        "tenant_b": a if b is None else b,
        "router": router,
        "operator": a if operator is None else operator,
    }


PUBLIC_ROW = {caller: 200 for caller in CALLERS}
DOC_ROWS = {
    ("GET", path): PUBLIC_ROW
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
}
