"""The Gnome Trader game API (examples/sf/gnome-game-api) as its manifest runs it: the world
role's rules (finds only near the gnome, once, with the player's secret) and its refusals, and
the edge role answering through a service router stand-in for the world's FQDN."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventually import Fatal, eventually
from flame.common.ports import free_port
from flame.sfemc.images import load_manifest

IMAGE = Path(__file__).resolve().parents[3] / "examples" / "sf" / "gnome-game-api"
HARBOUR = {"gnome": "g-harbour", "lat": 51.4481, "lon": -2.6031}


def start(env: dict[str, str], tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    assert manifest.entrypoint == ("python3", "server.py")
    port = free_port()
    with (tmp / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "server.py"], cwd=IMAGE,
            env={**os.environ, **manifest.environment, "FLAME_PORT": str(port), "HOME": str(tmp),
                 "FLAME_SFE": name, **env},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def output() -> str:
        return (tmp / f"{name}.log").read_text()

    def healthy() -> bool:
        if proc.poll() is not None:
            raise Fatal(f"{name} exited {proc.returncode}:\n{output()}")
        return httpx.get(url + "/health", timeout=2).status_code == 200

    try:
        eventually(healthy, what=lambda: f"{name} to be healthy:\n{output()}")
    except AssertionError:
        proc.kill()
        raise
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    assert proc.wait(10) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start({"GAME_ROLE": "world"}, tmp_path_factory.mktemp("world"), "world-1")
    try:
        yield url
    finally:
        stop(proc)


def test_a_find_counts_once_and_only_near_the_gnome(world: str) -> None:
    near = httpx.get(f"{world}/v1/gnomes", params={"lat": 51.3812, "lon": -2.3591, "radius": 300})
    assert [g["id"] for g in near.json()["gnomes"]] == ["g-abbey", "t-parade"]  # nearest first
    assert (
        near.json()["gnomes"][0]["model_url"]
        == "http://assets.gnome.flame.example/models/gnome.glb"
    )
    player = httpx.post(f"{world}/v1/players", json={"name": "Bo"}).json()
    bearer = {"Authorization": f"Bearer {player['secret']}"}
    first = httpx.post(f"{world}/v1/finds", json=HARBOUR, headers=bearer)
    assert first.status_code == 201
    assert first.json()["score"] == 10
    again = httpx.post(f"{world}/v1/finds", json=HARBOUR, headers=bearer)
    assert again.status_code == 409
    far = httpx.post(f"{world}/v1/finds", json=HARBOUR | {"lat": 51.46}, headers=bearer)
    assert far.status_code == 403
    assert far.json()["error"] == "too_far"
    assert {"name": "Bo", "score": 10} in httpx.get(f"{world}/v1/scores").json()["scores"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/finds", HARBOUR, {}, 401, "unauthenticated"),
        ("/v1/finds", HARBOUR, {"Authorization": "Bearer nope"}, 401, "unauthenticated"),
        ("/v1/players", {"name": "<script>"}, {}, 400, "invalid"),
        ("/v1/players", {"name": ""}, {}, 400, "invalid"),
        ("/v1/players", "x" * 20_000, {}, 413, "too_large"),
        ("/v1/nothing", {}, {}, 404, "not_found"),
    ],
)  # fmt: skip
def test_bad_requests_are_clear_4xx(
    world: str, path: str, body: object, headers: dict[str, str], status: int, code: str
) -> None:
    resp = httpx.post(world + path, json=body, headers=headers)
    assert resp.status_code == status
    assert resp.json()["error"] == code


def test_invalid_json_and_coordinates(world: str) -> None:
    player = httpx.post(f"{world}/v1/players", json={"name": "Cy"}).json()
    bearer = {"Authorization": f"Bearer {player['secret']}"}
    raw = httpx.post(f"{world}/v1/finds", content=b"{nope", headers=bearer)
    assert raw.json()["error"] == "invalid_json"
    lat = httpx.post(f"{world}/v1/finds", json=HARBOUR | {"lat": 123}, headers=bearer)
    assert lat.status_code == 400


def test_the_edge_role_calls_the_world_through_its_service_router(
    world: str, tmp_path: Path
) -> None:
    """A stand-in SR: forwards to the world when the Host is the world's FQDN, as an SR would."""
    hosts: list[str] = []

    class Sr(http.server.BaseHTTPRequestHandler):
        def _relay(self) -> None:
            hosts.append(self.headers["Host"])
            assert self.headers["Host"] == "db.gnome.flame.example"
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            req = urllib.request.Request(world + self.path, data=body, method=self.command)
            for name in ("Content-Type", "Authorization"):
                if self.headers.get(name):
                    req.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(req) as resp:
                    status, data = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                status, data = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _relay

        def log_message(self, format: str, *args: object) -> None:
            pass

    sr = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sr)
    threading.Thread(target=sr.serve_forever, daemon=True).start()
    env = {"GAME_ROLE": "edge", "GAME_WORLD_URL": "http://db.gnome.flame.example",
           "FLAME_SR_URL": f"http://127.0.0.1:{sr.server_address[1]}"}  # fmt: skip
    proc, edge = start(env, tmp_path, "edge-1")
    try:
        near = httpx.get(f"{edge}/v1/gnomes", params={"lat": 51.4481, "lon": -2.6031, "radius": 50})
        assert [g["id"] for g in near.json()["gnomes"]] == ["g-harbour"]
        assert near.json()["served_by"] == "edge-1"
        player = httpx.post(f"{edge}/v1/players", json={"name": "Di"})
        assert player.status_code == 201
        bearer = {"Authorization": f"Bearer {player.json()['secret']}"}
        assert httpx.post(f"{edge}/v1/finds", json=HARBOUR, headers=bearer).status_code == 201
        assert httpx.post(f"{edge}/v1/finds", json=HARBOUR, headers=bearer).status_code == 409
        httpx.get(f"{edge}/v1/gnomes")  # the spots are cached: no second fetch
        assert hosts.count("db.gnome.flame.example") == 4
    finally:
        stop(proc)
        sr.shutdown()
        sr.server_close()
