"""The dashboard in headless Chromium against a running FLAME-in-a-box: the topology is drawn
from the PCE, a registered endpoint shows on its cluster, a screenshot is kept in .artifacts/,
and without a token the page asks for one instead of showing anything."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame.sfr.client import PceClient
from flame.sfr.models import Endpoint

from .browser import chromium, render, screenshot
from .test_up import env, flame  # noqa: F401 - the env fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]


@contextlib.contextmanager
def running(env: dict[str, str]) -> Iterator[dict[str, object]]:  # noqa: F811
    up = flame(env, "--json", "up", "-d", "--free-ports")
    assert up.returncode == 0, up.stderr
    try:
        yield json.loads(up.stdout)
    finally:
        flame(env, "down")


def test_dashboard_shows_topology_and_endpoints(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    with running(env) as summary:
        token = summary["tokens"]["flame-up-operator"]  # type: ignore[index]
        with PceClient(str(summary["pce_url"]), token) as pce:
            pce.register(
                Endpoint(
                    sfe="web-1",
                    fqdn="web.example",
                    cluster="edge-bristol",
                    host="127.0.0.1",
                    port=9,
                )
            )
        url = f"{summary['dashboard_url']}/#token={token}"
        dom = render(url, tmp_path / "profile")
        nodes = set(re.findall(r'data-node="([^"]+)"', dom))
        assert nodes == {"sr-ue-1", "sr-platform", "edge-bristol", "metro-london", "ue-bristol"}
        assert re.search(r'data-endpoint="web-1" data-state="connected"', dom)
        assert re.search(r'data-link="sr-ue-1-sr-platform"', dom)
        assert "updated " in dom  # a snapshot arrived
        shot = screenshot(url, tmp_path / "profile2", "dashboard.png")
        assert shot.stat().st_size > 10_000

        # No token: the login form, and nothing drawn.
        bare = render(str(summary["dashboard_url"]) + "/", tmp_path / "profile3", budget_ms=1500)
        assert 'id="login"' in bare
        assert 'id="login" hidden' not in bare
        assert "data-node=" not in bare
