"""The SR's request path runs compiled (mypyc) when built, and never from a stale build (SFR-1)."""

from __future__ import annotations

import os

import pytest

from flame.sfr.router.native import COMPILED_MODULES, NativeStatus, native_status


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An edited module with an old .so next to it would run the old code: `make build`."""
    status = native_status()
    assert not status.stale, status.describe()


@pytest.mark.skipif(
    os.environ.get("FLAME_REQUIRE_COMPILED") != "1",
    reason="`make unit` sets FLAME_REQUIRE_COMPILED=1 after building the data plane",
)
def test_the_request_path_is_compiled_under_make() -> None:
    status = native_status()
    assert status.compiled == COMPILED_MODULES, status.describe()


def test_status_says_what_to_do() -> None:
    assert "make build" in NativeStatus((), ("protocol",), ()).describe()
    assert "older than their source" in NativeStatus(("protocol",), (), ("protocol",)).describe()
    assert "compiled (mypyc, 1 modules)" in NativeStatus(("protocol",), (), ()).describe()
