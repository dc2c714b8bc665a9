"""examples/ar-game on `flame up --topology sandpit`, following its README step by step (MC-11,
the seed's Gnome Trader case): the images packaged, the template deployed as the tenant, a
Bristol player finding a gnome through the SR, the gnome's model at the level its link calls
for, the SFs' measurements in the tenant's CLMC database; `flame down` stops everything."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trimesh

from eventually import eventually
from flame.sfr.models import Endpoint
from flame.sfr.router.metrics import RouterMetrics

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "examples" / "ar-game" / "service.yaml"


def flame(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flame", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    config = tmp_path / "config.toml"
    config.touch()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path / "home"),
    }
    yield environment
    flame(environment, "down")  # whatever happened, nothing is left running


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def query(clmc: str, token: str, q: str) -> list[dict[str, object]]:
    resp = httpx.get(f"{clmc}/query", params={"db": "demo", "q": q},
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return list(resp.json()["results"][0].get("series", []))


def test_the_template_is_valid_and_its_alerts_read_what_the_srs_report() -> None:
    """Placement constraints checked against the sandpit; every alert names a measurement,
    field and tags of the SR's line protocol (the only data alert rules see)."""
    proc = subprocess.run([sys.executable, "-m", "flame", "--json", "validate", "--strict",
                           "--topology", str(ROOT / "examples/topology/sandpit.yaml"), str(TEMPLATE)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model = json.loads(proc.stdout)["model"]
    states = {
        (s["cluster"], s["sf"]): s["state"] for p in model["initial_policies"] for s in p["states"]
    }
    assert states == {
        ("edge-bristol", "game-api"): "connected", ("edge-bristol", "asset-server"): "connected",
        ("edge-bath", "game-api"): "booted", ("edge-bath", "asset-server"): "placed",
        ("metro-london", "world-db"): "connected",
    }  # fmt: skip
    metrics = RouterMetrics("sr-ue-2")
    endpoint = Endpoint(sfe="e", fqdn="api.gnome.flame.example", cluster="edge-bristol",
                        host="127.0.0.1", port=1)  # fmt: skip
    metrics.request_done("api.gnome.flame.example", endpoint, status=200, complete=True,
                         rt_ms=5.0, bytes_in=0, bytes_out=1, coalesced=False)  # fmt: skip
    reported = {}
    for line in metrics.collect(1):
        series, fields, _ = line.split(" ")
        name, *tags = series.split(",")
        reported[name] = (
            {t.split("=")[0] for t in tags},
            {f.split("=")[0] for f in fields.split(",")},
        )
    rules = model["alert_rules"]
    assert {r["name"] for r in rules} == {"bristol_api_silent", "player_surge_bath", "slow_assets"}
    for rule in rules:
        tag_keys, field_keys = reported[rule["measurement"]]
        assert rule["field"] in field_keys
        assert {tag for tag, _ in rule["tags"]} <= tag_keys


@pytest.mark.slow
def test_mc11_ar_game_readme_on_the_sandpit(env: dict[str, str], tmp_path: Path) -> None:
    up = json.loads(ok(flame(env, "--json", "up", "-d", "--free-ports", "--topology", "sandpit",
                             "--no-demo")))  # fmt: skip
    ok(flame(env, "delegate", "gnome.flame.example", "--tenant", "demo"))
    ok(flame(env, "package", "examples/sf/gnome-game-api", "--tag", "1.0"))
    ok(flame(env, "package", "examples/sf/gnome-assets", "--tag", "1.0"))
    token = ok(flame(env, "token", "issue", "gnome-sfs", "--tenant", "demo")).strip()
    # The README's sed, and (--free-ports) the CLMC URL flame up printed, the same way.
    template = tmp_path / "ar-game.yaml"
    sed = f'sed "/clmc_token:/,/default:/ s|default: \\"\\"|default: \\"{token}\\"|" {TEMPLATE}'
    text = subprocess.run(["bash", "-c", sed], capture_output=True, text=True, check=True).stdout
    assert f'default: "{token}"' in text
    template.write_text(text.replace("http://127.0.0.1:8086", up["clmc_url"]))
    ok(flame(env, "deploy", str(template), "--tenant", "demo"))
    status = ok(flame(env, "status", "gnome-hunt"))
    assert "5/5 endpoints at their desired state" in status

    sr = up["sr_urls"]["sr-ue-1"]
    api = {"Host": "api.gnome.flame.example"}
    with httpx.Client(base_url=sr, timeout=30) as phone:
        near = phone.get("/v1/gnomes", params={"lat": 51.4481, "lon": -2.6031, "radius": 500},
                         headers=api)  # fmt: skip
        assert near.status_code == 200, near.text
        doc = near.json()
        assert [g["id"] for g in doc["gnomes"]] == ["g-harbour"]
        assert doc["served_by"] == "gnome-hunt-bristol.game-api.edge-bristol"  # the edge API
        player = phone.post("/v1/players", json={"name": "Ada"}, headers=api)
        assert player.status_code == 201, player.text
        secret = player.json()["secret"]
        found = phone.post("/v1/finds", json={"gnome": "g-harbour", "lat": 51.4481, "lon": -2.6031},
                           headers=api | {"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert found.status_code == 201, found.text
        assert found.json()["score"] == 10
        far = phone.post("/v1/finds", json={"gnome": "g-abbey", "lat": 51.4481, "lon": -2.6031},
                         headers=api | {"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert far.status_code == 403  # Bath Abbey is 17 km away
        assert far.json()["error"] == "too_far"
        # Written in London, read back through the edge.
        assert phone.get("/v1/scores", headers=api).json()["scores"] == [
            {"name": "Ada", "score": 10}
        ]

        assets = {"Host": "assets.gnome.flame.example"}
        slow = phone.get("/models/gnome.glb", headers=assets | {"Downlink": "0.3"})
        fast = phone.get("/models/gnome.glb", headers=assets | {"Downlink": "20"})
        assert slow.status_code == fast.status_code == 200
        assert slow.headers["flame-lod"] == "5"
        assert fast.headers["flame-lod"] == "100"
        assert "sr-ue-1" in fast.headers["via"]
        assert slow.headers["vary"].startswith("Downlink")
        manifest = phone.get("/models/gnome/manifest.json", headers=assets).json()
        sizes = {lv["lod"]: lv["bytes"] for lv in manifest["lods"]}
        assert len(slow.content) == sizes["5"] < len(fast.content) == sizes["100"]
        low = trimesh.load(io.BytesIO(slow.content), file_type="glb", force="scene")
        assert isinstance(low, trimesh.Scene)  # force="scene"
        assert sum(len(g.faces) for g in low.geometry.values()) == int(
            slow.headers["flame-lod-triangles"]
        )

    # The SFs' own measurements reach the tenant's CLMC database.
    def measured() -> tuple[dict[str, float], float]:
        lods = {s["tags"]["lod"]: s["values"][0][1]  # type: ignore[index]
                for s in query(up["clmc_url"], token,
                               'SELECT sum("requests") FROM "lod_requests" GROUP BY "lod"')}  # fmt: skip
        game = query(up["clmc_url"], token, 'SELECT sum("finds") FROM "gnome_api"')
        return lods, float(game[0]["values"][0][1]) if game else 0.0  # type: ignore[index]

    eventually(measured, until=lambda m: m[0].get("5", 0) >= 1 and m[0].get("100", 0) >= 1
               and m[1] >= 1, every=0.5, what="LOD requests and finds at the CLMC")  # fmt: skip

    down = ok(flame(env, "down"))
    assert "stopped" in down
