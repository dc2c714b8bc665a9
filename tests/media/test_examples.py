"""The demo's template and SF manifests: valid, consistent with the router's measurements and
with each other, and their entrypoints really start our servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from flame.common.ports import free_port
from flame.sfemc.images import load_manifest
from flame.sfr.models import Endpoint
from flame.sfr.router.metrics import RouterMetrics

from .conftest import Stream
from .helpers import Proc

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "examples" / "vod" / "service.yaml"
TOPOLOGY = ROOT / "examples" / "topology" / "sandpit.yaml"


def validated_model() -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flame",
            "--json",
            "validate",
            "--strict",
            "--topology",
            str(TOPOLOGY),
            str(SERVICE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"]
    assert doc["warnings"] == 0
    return dict(doc["model"])


def test_the_template_places_the_origin_in_the_metro_and_the_cache_at_the_edge() -> None:
    model = validated_model()
    sfs = {sf["name"]: sf for sf in model["service_functions"]}
    assert sfs["origin"]["fqdn"] == "origin.vod.flame.example"
    assert sfs["cache"]["fqdn"] == "vod.flame.example"
    assert sfs["cache"]["upstream"] == ["origin"]
    assert ["ORIGIN_URL", "http://origin.vod.flame.example"] in sfs["cache"]["environment"]
    states = {
        (s["cluster"], s["sf"]): s["state"] for p in model["initial_policies"] for s in p["states"]
    }
    assert states[("metro-london", "origin")] == "connected"
    assert states[("edge-bristol", "cache")] == "booted"
    changes = {
        p["alert"]: {(c["cluster"], c["sf"]): c["state"] for c in p["changes"]}
        for p in model["state_change_policies"]
    }
    assert changes["vod_slow_at_bristol"] == {("edge-bristol", "cache"): "connected"}
    assert changes["vod_quiet_at_bristol"] == {("edge-bristol", "cache"): "booted"}


def test_the_alerts_name_what_the_service_router_reports() -> None:
    """The alert's measurement, field and tags must be those of the SR's line protocol."""
    metrics = RouterMetrics("sr-ue-1")
    endpoint = Endpoint(
        sfe="cache-bristol",
        fqdn="vod.flame.example",
        cluster="edge-bristol",
        host="127.0.0.1",
        port=1,
    )
    metrics.set_paths({("vod.flame.example", "cache-bristol"): 15.0})  # from the table
    metrics.request_done(
        "vod.flame.example", endpoint, status=200, complete=True, rt_ms=45.0,
        bytes_in=0, bytes_out=10, coalesced=False,
    )  # fmt: skip
    points = {}
    for line in metrics.collect(1):
        series, fields, _ = line.split(" ")
        name, *tags = series.split(",")
        points[name] = (
            dict(t.split("=") for t in tags),
            dict(f.split("=") for f in fields.split(",")),
        )
    for rule in validated_model()["alert_rules"]:
        assert rule["notify_sfemc"]
        tag_values, field_values = points[rule["measurement"]]
        assert rule["field"] in field_values
        for tag, value in rule["tags"]:
            assert tag_values[tag] == value


def test_the_manifests_run_our_servers(stream: Stream, tmp_path: Path) -> None:
    origin = load_manifest(ROOT / "examples/sf/vod-origin/flame-sf.yaml", default_name="x")
    cache = load_manifest(ROOT / "examples/sf/vod-cache/flame-sf.yaml", default_name="x")
    assert origin.entrypoint == ("python3", "-m", "flame.media.origin")
    assert cache.entrypoint == ("python3", "-m", "flame.media.cache")
    assert origin.health is not None
    assert cache.health is not None
    assert origin.health.path == cache.health.path == "/health"
    # Start each as the process VIM would: its environment plus FLAME_PORT.
    oport, cport = free_port(), free_port()
    o = Proc(
        origin.entrypoint[2],
        [],
        {**origin.environment, "FLAME_PORT": str(oport), "FLAME_MEDIA_DIR": str(stream.root)},
        tmp_path / "o.log",
    )
    c = Proc(
        cache.entrypoint[2],
        [],
        {**cache.environment, "FLAME_PORT": str(cport), "ORIGIN_URL": f"http://127.0.0.1:{oport}"},
        tmp_path / "c.log",
    )
    try:
        o.wait_healthy(f"http://127.0.0.1:{oport}")
        c.wait_healthy(f"http://127.0.0.1:{cport}")
        r = httpx.get(f"http://127.0.0.1:{cport}/hls/master.m3u8", trust_env=False)
        assert r.status_code == 200
        assert r.text.startswith("#EXTM3U")
    finally:
        assert (c.stop(), o.stop()) == (0, 0)
