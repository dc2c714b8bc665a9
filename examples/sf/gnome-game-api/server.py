"""gnome-game-api: the game logic of the Gnome Trader AR example (standard library only).

One program, two roles (``GAME_ROLE``):

- ``world``: the world database. It holds the gnome spots (seeded from ``spots.json``), the
  players, their finds and scores in SQLite (``GAME_DB``, default ``$HOME/world.sqlite3``).
- ``edge``: the game API next to the players. It keeps a copy of the spots (refreshed every
  ``GAME_SPOTS_TTL_S``) to answer "which gnomes are near me" locally, and sends writes and the
  leaderboard to the world database through its service router (``FLAME_SR_URL`` with the
  world's FQDN as Host: ``GAME_WORLD_URL``), as any FLAME SF calls another.

HTTP API (JSON; errors are ``{"error", "message"}``):

    GET  /health
    GET  /v1/gnomes?lat=&lon=&radius=    spots within radius metres (default 1000), nearest first
    POST /v1/players {"name"}            -> 201 {"id", "secret"}: the secret authenticates finds
    POST /v1/finds {"gnome", "lat", "lon"} with "Authorization: Bearer <secret>"
                                         -> 201 {"player", "gnome", "points", "score"}; 403 when
                                            further than GAME_FIND_RADIUS_M from the gnome,
                                            409 when found before
    GET  /v1/scores                      the 20 best players

Every second a point goes to the CLMC (``CLMC_URL``, ``CLMC_TOKEN``, database ``CLMC_DB`` or the
tenant's): measurement ``gnome_api`` with the SF's identity tags and the fields requests,
errors, finds, active_sessions (players seen in the last 60 s) and response_time (mean ms).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROLE = os.environ.get("GAME_ROLE", "world")
SFE = os.environ.get("FLAME_SFE", "local")
MAX_BODY = 16 * 1024
FIND_RADIUS_M = float(os.environ.get("GAME_FIND_RADIUS_M", "30"))
ASSETS = os.environ.get("GAME_ASSETS_URL", "http://assets.gnome.flame.example")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6_371_000.0 * 2 * math.asin(math.sqrt(min(1.0, a)))


def number(doc: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ApiError(400, "invalid", f"'{key}' must be a number from {lo} to {hi}")
    return float(value)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.errors = self.finds = 0
        self.rt_sum_ms = 0.0
        self.seen: dict[str, float] = {}  # player -> last request (monotonic)

    def done(self, status: int, rt_ms: float, player: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.errors += status >= 500
            self.rt_sum_ms += rt_ms
            if player:
                self.seen[player] = time.monotonic()

    def take(self) -> dict[str, Any]:
        with self.lock:
            cutoff = time.monotonic() - 60
            self.seen = {p: t for p, t in self.seen.items() if t >= cutoff}
            fields: dict[str, Any] = {
                "requests": self.requests, "errors": self.errors, "finds": self.finds,
                "active_sessions": len(self.seen),
            }  # fmt: skip
            if self.requests:
                fields["response_time"] = self.rt_sum_ms / self.requests
            self.requests = self.errors = self.finds = 0
            self.rt_sum_ms = 0.0
            return fields


STATS = Stats()


class World:
    """The authoritative store (role ``world``)."""

    def __init__(self, path: Path, spots: list[dict[str, Any]]) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.db.executescript(
            """
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS spots (id TEXT PRIMARY KEY, name TEXT, model TEXT,
                lat REAL, lon REAL, points INTEGER);
            CREATE TABLE IF NOT EXISTS players (id TEXT PRIMARY KEY, name TEXT,
                secret_sha256 TEXT, score INTEGER DEFAULT 0, created REAL);
            CREATE TABLE IF NOT EXISTS finds (player TEXT, gnome TEXT, at REAL,
                PRIMARY KEY (player, gnome));
            """
        )
        with self.lock:
            for s in spots:
                self.db.execute(
                    "INSERT OR REPLACE INTO spots VALUES (?, ?, ?, ?, ?, ?)",
                    (s["id"], s["name"], s["model"], s["lat"], s["lon"], s["points"]),
                )

    def spots(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT id, name, model, lat, lon, points FROM spots")
            keys = ("id", "name", "model", "lat", "lon", "points")
            return [dict(zip(keys, row, strict=True)) for row in rows.fetchall()]

    def new_player(self, doc: dict[str, Any]) -> dict[str, Any]:
        name = doc.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 40 or set(name) - NAME_CHARS:
            raise ApiError(400, "invalid", "'name': 1 to 40 letters, digits, spaces, . _ -")
        pid, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        with self.lock:
            self.db.execute(
                "INSERT INTO players VALUES (?, ?, ?, 0, ?)",
                (pid, name, hashlib.sha256(secret.encode()).hexdigest(), time.time()),
            )
        return {"id": pid, "name": name, "secret": secret}

    def player_of(self, header: str | None) -> str:
        scheme, _, secret = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "unauthenticated", "send 'Authorization: Bearer <secret>'")
        digest = hashlib.sha256(secret.strip().encode()).hexdigest()
        with self.lock:
            rows = self.db.execute("SELECT id, secret_sha256 FROM players").fetchall()
        for pid, known in rows:
            if hmac.compare_digest(known, digest):
                return str(pid)
        raise ApiError(401, "unauthenticated", "unknown player secret")

    def find(self, player: str, doc: dict[str, Any]) -> dict[str, Any]:
        gnome = doc.get("gnome")
        lat, lon = number(doc, "lat", -90, 90), number(doc, "lon", -180, 180)
        spot = next((s for s in self.spots() if s["id"] == gnome), None)
        if spot is None:
            raise ApiError(404, "not_found", f"no gnome {str(gnome)[:40]!r}")
        away = metres(lat, lon, spot["lat"], spot["lon"])
        if away > FIND_RADIUS_M:
            raise ApiError(403, "too_far", f"the gnome is {away:.0f} m away; get within "
                           f"{FIND_RADIUS_M:.0f} m")  # fmt: skip
        with self.lock:
            try:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO finds VALUES (?, ?, ?)", (player, gnome, time.time()))
                self.db.execute("UPDATE players SET score = score + ? WHERE id = ?",
                                (spot["points"], player))  # fmt: skip
                self.db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self.db.execute("ROLLBACK")
                raise ApiError(409, "found_before", "you found this gnome before") from None
            score = self.db.execute("SELECT score FROM players WHERE id = ?", (player,)).fetchone()
        with STATS.lock:
            STATS.finds += 1
        return {"player": player, "gnome": gnome, "points": spot["points"], "score": score[0]}

    def scores(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT name, score FROM players ORDER BY score DESC, created LIMIT 20"
            ).fetchall()
        return [{"name": n, "score": s} for n, s in rows]


class EdgeLink:
    """Calls to the world database through this cluster's service router (role ``edge``)."""

    def __init__(self, sr_url: str, world_url: str, ttl_s: float) -> None:
        self.sr_url = sr_url.rstrip("/")
        self.host = urllib.parse.urlsplit(world_url).netloc
        self.ttl_s = ttl_s
        self._spots: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._lock = threading.Lock()

    def call(
        self, method: str, path: str, body: bytes | None, auth: str | None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.sr_url + path, data=body, method=method)
        req.add_header("Host", self.host)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read(1024 * 1024)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(1024 * 1024)
        except OSError as exc:
            raise ApiError(502, "world_unreachable", f"the world database: {exc}") from None

    def spots(self) -> list[dict[str, Any]]:
        with self._lock:
            fetched, spots = self._spots
            if time.monotonic() - fetched < self.ttl_s and spots:
                return spots
        status, body = self.call("GET", "/v1/gnomes?radius=0", None, None)
        if status != 200:
            raise ApiError(502, "world_unreachable", f"the world database answered {status}")
        spots = json.loads(body)["gnomes"]
        with self._lock:
            self._spots = (time.monotonic(), spots)
        return spots


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the service routers pool connections
    world: World | None = None
    edge: EdgeLink | None = None

    def _send(self, status: int, doc: Any, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Flame-Sfe", SFE)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit() or int(raw) > MAX_BODY:
            raise ApiError(413, "too_large", f"a body of at most {MAX_BODY} bytes")
        return self.rfile.read(int(raw))

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return doc

    def _handle(self) -> None:
        started = time.perf_counter()
        status, player = 500, None
        try:
            status, player = self._route()
        except ApiError as exc:
            status = exc.status
            self._send(exc.status, {"error": exc.code, "message": exc.message})
        finally:
            STATS.done(status, (time.perf_counter() - started) * 1000, player)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _route(self) -> tuple[int, str | None]:
        url = urllib.parse.urlsplit(self.path)
        route = (self.command, url.path)
        if route == ("GET", "/health"):
            self._send(200, {"status": "ok", "role": ROLE, "sfe": SFE})
            return 200, None
        if route == ("GET", "/v1/gnomes"):
            return self._gnomes(urllib.parse.parse_qs(url.query)), None
        if route == ("GET", "/v1/scores"):
            return self._forward_or("GET", None, lambda: {"scores": self._w().scores()}), None
        if route == ("POST", "/v1/players"):
            body = self._body()
            return self._forward_or("POST", body, lambda: self._w().new_player(self._json(body)),
                                    created=True), None  # fmt: skip
        if route == ("POST", "/v1/finds"):
            body = self._body()
            auth = self.headers.get("Authorization")
            if self.edge is not None:
                seen = hashlib.sha256(auth.encode()).hexdigest()[:16] if auth else None
                return self._forward("POST", body, auth), seen
            player = self._w().player_of(auth)
            self._send(201, self._w().find(player, self._json(body)))
            return 201, player
        raise ApiError(404, "not_found", f"no route {self.command} {url.path}")

    def _w(self) -> World:
        assert self.world is not None
        return self.world

    def _forward(self, method: str, body: bytes | None, auth: str | None = None) -> int:
        assert self.edge is not None
        status, raw = self.edge.call(method, self.path, body, auth)
        self._send(status, None, raw)
        return status

    def _forward_or(
        self, method: str, body: bytes | None, local: Any, created: bool = False
    ) -> int:
        if self.edge is not None:
            return self._forward(method, body)
        status = 201 if created else 200
        self._send(status, local())
        return status

    def _gnomes(self, query: dict[str, list[str]]) -> int:
        spots = self.edge.spots() if self.edge is not None else self._w().spots()
        try:
            radius = float(query.get("radius", ["1000"])[0])
            lat = float(query["lat"][0]) if "lat" in query else None
            lon = float(query["lon"][0]) if "lon" in query else None
        except ValueError:
            raise ApiError(400, "invalid", "lat, lon and radius must be numbers") from None
        out = []
        for s in spots:
            spot = {**s, "model_url": f"{ASSETS}/models/{s['model']}.glb"}
            if lat is not None and lon is not None and radius > 0:
                spot["distance_m"] = round(metres(lat, lon, s["lat"], s["lon"]), 1)
                if spot["distance_m"] > radius:
                    continue
            out.append(spot)
        out.sort(key=lambda s: s.get("distance_m", 0.0))
        self._send(200, {"gnomes": out, "served_by": SFE})
        return 200

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are counted for the CLMC; the log keeps to start, stop and problems


def report_loop(stop: threading.Event) -> None:
    """Every second, one `gnome_api` point to the CLMC (line protocol); off without CLMC_URL."""
    url, token = os.environ.get("CLMC_URL"), os.environ.get("CLMC_TOKEN")
    db = os.environ.get("CLMC_DB") or os.environ.get("FLAME_TENANT")
    if not url or not db:
        return
    tags = ",".join(
        f"{k}={os.environ[f'FLAME_{k.upper()}']}"
        for k in ("cluster", "sf", "sfc", "sfci", "sfe", "tenant")
        if os.environ.get(f"FLAME_{k.upper()}")
    )
    target = f"{url.rstrip('/')}/write?db={urllib.parse.quote(db)}&precision=ns"
    while not stop.wait(1.0):
        fields = STATS.take()
        text = ",".join(
            f"{k}={v}i" if isinstance(v, int) else f"{k}={v!r}" for k, v in fields.items()
        )
        line = f"gnome_api{',' + tags if tags else ''} {text} {time.time_ns()}"
        req = urllib.request.Request(target, data=line.encode(), method="POST")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # the tenant's database does not exist yet: create it
                create = urllib.request.Request(
                    f"{url.rstrip('/')}/query?q=" + urllib.parse.quote(f'CREATE DATABASE "{db}"'),
                    method="POST",
                )
                if token:
                    create.add_header("Authorization", f"Bearer {token}")
                try:
                    urllib.request.urlopen(create, timeout=5).close()
                except OSError as again:
                    print(f"cannot create CLMC database {db}: {again}", flush=True)
            else:
                print(f"the CLMC refused our point: HTTP {exc.code}", flush=True)
        except OSError as exc:
            print(f"cannot reach the CLMC: {exc}", flush=True)


def main() -> None:
    here = Path(__file__).resolve().parent
    if ROLE == "edge":
        sr, world_url = os.environ.get("FLAME_SR_URL"), os.environ.get("GAME_WORLD_URL")
        if not sr or not world_url:
            sys.exit("GAME_ROLE=edge needs FLAME_SR_URL (set by the VIM) and GAME_WORLD_URL")
        Handler.edge = EdgeLink(sr, world_url, float(os.environ.get("GAME_SPOTS_TTL_S", "10")))
    elif ROLE == "world":
        spots = json.loads((here / "spots.json").read_text())["spots"]
        home = Path(os.environ.get("HOME") or ".")
        Handler.world = World(Path(os.environ.get("GAME_DB") or home / "world.sqlite3"), spots)
    else:
        sys.exit(f"GAME_ROLE={ROLE!r}: expected world or edge")
    port = int(os.environ.get("FLAME_PORT", "8080"))
    host = os.environ.get("FLAME_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    stop = threading.Event()
    threading.Thread(target=report_loop, args=(stop,), daemon=True, name="clmc").start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"gnome-game-api ({ROLE}) {SFE} listening on {host}:{port}", flush=True)
    server.serve_forever()
    stop.set()
    server.server_close()
    print(f"gnome-game-api {SFE} stopped", flush=True)


if __name__ == "__main__":
    main()
