"""Benchmark: the LOD SF's ladder build against the simplification library called by hand.

Ours: `flame.media.lod.build.build_lods` on a .glb, the levels 100/50/20/5 % — load with
trimesh, weld each mesh, simplify it with fast-simplification, write each level as .glb, and
measure each level's error against the source (10,000 samples per surface, exact
point-to-triangle distances). Peer: what a script does by hand with the same libraries and
the same settings — `trimesh.load`, `fast_simplification.simplify` for each level, `export` —
without the error measurement. Also reported: the simplifier alone (the peer's
`fast_simplification.simplify` calls), and ours over HTTP: a `PUT` to the SF, which answers
once the levels are on disk.

The models are icospheres (20 x 4^n triangles) in a one-node scene. Rounds alternate A B.

    .venv/bin/python bench/lod.py            # 82k and 328k triangles, 5 rounds
    .venv/bin/python bench/lod.py --quick    # 82k triangles, 3 rounds: well under a minute

Ratios > 1 mean ours takes longer. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fast_simplification
import httpx
import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from flame.common.ports import free_port  # noqa: E402
from flame.media.lod.build import build_lods  # noqa: E402

PERCENTS = [100, 50, 20, 5]
KEY = "bench-lod-key-0123456789abcdef"


def sphere(subdivisions: int) -> bytes:
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.icosphere(subdivisions=subdivisions), node_name="s")
    return bytes(scene.export(file_type="glb"))


def by_hand(data: bytes, out: Path) -> tuple[float, float]:
    """(total s, simplifier s): load, simplify per level, write, like a script would."""
    started = time.perf_counter()
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    simplify_s = 0.0
    (out / "lod-100.glb").write_bytes(data)
    for percent in PERCENTS[1:]:
        t = time.perf_counter()
        points, faces = fast_simplification.simplify(
            np.asarray(mesh.vertices, dtype=np.float32),
            np.asarray(mesh.faces, dtype=np.int32),
            target_reduction=1 - percent / 100,
        )
        simplify_s += time.perf_counter() - t
        level = trimesh.Trimesh(vertices=points, faces=faces, process=False)
        (out / f"lod-{percent}.glb").write_bytes(level.export(file_type="glb"))
    return time.perf_counter() - started, simplify_s


def ours(data: bytes, out: Path) -> float:
    started = time.perf_counter()
    build_lods(data, PERCENTS, out)
    return time.perf_counter() - started


def over_http(data: bytes, rounds: int, work: Path) -> list[float]:
    """PUT the model to the SF (one process, started and stopped here) `rounds` times."""
    port = free_port()
    env = {**os.environ, "FLAME_PORT": str(port), "FLAME_TENANT": "bench",
           "LOD_DATA_DIR": str(work / "sf"), "LOD_API_KEYS": f"bench={KEY}",
           "LOD_MAX_TRIANGLES": "5000000"}  # fmt: skip
    with (work / "sf.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flame.media.lod"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        times = []
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "model/gltf-binary"}
        for i in range(rounds):
            started = time.perf_counter()
            resp = httpx.put(f"{url}/v1/models/m{i}", content=data, headers=headers, timeout=600)
            times.append(time.perf_counter() - started)
            assert resp.status_code == 201, resp.text
        return times
    finally:
        proc.terminate()
        proc.wait(20)


def run(subdivisions: int, rounds: int) -> dict[str, Any]:
    data = sphere(subdivisions)
    triangles = 20 * 4**subdivisions
    a, b, simp = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-lod-") as tmp:
        work = Path(tmp)
        for i in range(rounds):  # A B A B
            (work / f"a{i}").mkdir()
            (work / f"b{i}").mkdir()
            a.append(ours(data, work / f"a{i}"))
            total, s = by_hand(data, work / f"b{i}")
            b.append(total)
            simp.append(s)
        http = over_http(data, rounds, work)
    row = {
        "triangles": triangles,
        "bytes": len(data),
        "ours_s": round(statistics.median(a), 3),
        "peer_s": round(statistics.median(b), 3),
        "simplifier_s": round(statistics.median(simp), 3),
        "ours_http_s": round(statistics.median(http), 3),
    }
    row["ratio"] = round(row["ours_s"] / row["peer_s"], 2)
    row["http_ratio"] = round(row["ours_http_s"] / row["peer_s"], 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    sizes, rounds = ([6], 3) if args.quick else ([6, 7], 5)
    print("ladder 100/50/20/5 %; ours: build_lods (weld, simplify, write, measure error); "
          "peer: trimesh.load + fast_simplification.simplify + export by hand, no measurement")  # fmt: skip
    rows = []
    for n in sizes:
        row = run(n, rounds)
        rows.append(row)
        print(f"{row['triangles']:>9,} triangles ({row['bytes'] / 1e6:.1f} MB): ours {row['ours_s']:.3f} s, "
              f"by hand {row['peer_s']:.3f} s (simplifier alone {row['simplifier_s']:.3f} s), "
              f"ratio {row['ratio']:.2f}; over HTTP (PUT to the SF) {row['ours_http_s']:.3f} s, "
              f"ratio {row['http_ratio']:.2f}")  # fmt: skip
    print(json.dumps({"bench": "lod", "rounds": rounds, "results": rows}))


if __name__ == "__main__":
    main()
