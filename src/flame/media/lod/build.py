"""Levels of detail of one glTF model: load (trimesh), simplify (fast-simplification, the
Fast-Quadric-Mesh-Simplification library), write .glb files and measure each against the source.

Every function here is synchronous and CPU-bound: the service runs `build_lods` in a worker
thread, a bounded number at a time. The 100 % level is the uploaded file itself, byte for
byte; the others keep the scene graph (nodes, transforms, names) and each mesh's PBR factors,
and reduce each mesh to the level's share of the source mesh's triangles, simplifying the level
above (cheaper than starting from the source each time). Texture coordinates, normals and
textures are not carried into simplified levels (the simplifier moves vertices; mapping UVs
onto the new vertices is not done here: docs/media-lod.md).

The error of a level is measured on the whole scene in world space: `SAMPLES` points sampled on
the source surface and on the level's surface, each one's distance to the other surface (exact
point-to-triangle distances to the nearest `CANDIDATES` triangles by centroid): the largest of
them (a sampled, symmetric Hausdorff distance) and the mean of both directions, also relative
to the diagonal of the source's bounding box. The 100 % level's error is 0 by construction; a
peak between samples can be missed, so the Hausdorff figure is a lower bound.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fast_simplification  # type: ignore[import-untyped]
import numpy as np
import trimesh
from numpy.typing import NDArray
from scipy.spatial import cKDTree  # type: ignore[import-untyped]
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from flame.media.lod.glb import without_images

__all__ = ["BuildError", "Level", "build_lods", "load_scene", "scene_triangles"]

SAMPLES = 10_000
CANDIDATES = 8
_SEED = 20260  # the same samples for every level of a model: comparable figures


class BuildError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Level:
    percent: int
    triangles: int
    size: int
    sha256: str
    hausdorff: float
    mean_distance: float
    relative_hausdorff: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "lod": str(self.percent),
            "percent": self.percent,
            "triangles": self.triangles,
            "bytes": self.size,
            "sha256": self.sha256,
            "error": {
                "hausdorff": self.hausdorff,
                "mean": self.mean_distance,
                "relative_hausdorff": self.relative_hausdorff,
            },
            "build_s": round(self.seconds, 4),
        }


def load_scene(data: bytes) -> trimesh.Scene:
    """The scene of a .glb; any loader failure is a `BuildError` (the caller's 422)."""
    try:
        scene = trimesh.load(io.BytesIO(data), file_type="glb", force="scene")
    except Exception as exc:  # any parser failure: a malformed upload
        raise BuildError("invalid_gltf", f"the glTF could not be read: {exc}") from None
    if not isinstance(scene, trimesh.Scene):
        raise BuildError("invalid_gltf", "the glTF holds no scene")
    if scene_triangles(scene) == 0:
        raise BuildError("no_triangles", "the model has no triangle mesh to simplify")
    return scene


def scene_triangles(scene: trimesh.Scene) -> int:
    """Triangles drawn: each mesh counted once per node that instances it."""
    total = 0
    for node in scene.graph.nodes_geometry:
        _, name = scene.graph[node]
        geom = scene.geometry.get(name)
        if isinstance(geom, trimesh.Trimesh):
            total += len(geom.faces)
    return total


def build_lods(data: bytes, percents: list[int], out_dir: Path) -> list[Level]:
    """Write ``lod-<percent>.glb`` for each percent into `out_dir`; return the levels."""
    try:
        stripped = without_images(data)
    except (struct.error, ValueError, TypeError) as exc:  # not a GLB `inspect_glb` let through
        raise BuildError("invalid_gltf", f"the glTF could not be read: {exc}") from None
    source = load_scene(stripped)
    reference = _world_mesh(source)
    diagonal = float(np.linalg.norm(reference.bounds[1] - reference.bounds[0])) or 1.0
    surface = _Surface(reference)
    levels: list[Level] = []
    previous = source
    for percent in sorted(set(percents), reverse=True):
        started = time.perf_counter()
        if percent >= 100:
            body, scene, h, mean = data, source, 0.0, 0.0
        else:
            # Each level is simplified from the one above it, to its share of the source's
            # triangles: a 20 % level costs a pass over the 50 % one, not over the source.
            # The error is still measured against the source.
            scene = previous = _simplified(source, previous, percent / 100.0)
            try:
                body = bytes(scene.export(file_type="glb"))  # type: ignore[no-untyped-call]
            except Exception as exc:  # the writer refused what the reader made
                raise BuildError("invalid_gltf", f"the model cannot be rewritten: {exc}") from None
            h, mean = _distance(surface, _Surface(_world_mesh(scene)))
        (out_dir / f"lod-{percent}.glb").write_bytes(body)
        levels.append(
            Level(
                percent=percent,
                triangles=scene_triangles(scene),
                size=len(body),
                sha256=hashlib.sha256(body).hexdigest(),
                hausdorff=h,
                mean_distance=mean,
                relative_hausdorff=h / diagonal,
                seconds=time.perf_counter() - started,
            )
        )
    return levels


def _simplified(source: trimesh.Scene, previous: trimesh.Scene, ratio: float) -> trimesh.Scene:
    """`previous` (the source or a level of it) with each mesh reduced to `ratio` of the
    source mesh's triangles."""
    scene = previous.copy()
    for name, geom in list(scene.geometry.items()):
        original = source.geometry.get(name)
        if not isinstance(geom, trimesh.Trimesh) or not isinstance(original, trimesh.Trimesh):
            continue
        target = max(4, round(len(original.faces) * ratio))
        if len(geom.faces) <= target:
            continue  # a handful of triangles, or already as small
        # Welded by position: vertices split for normals or UV seams would be borders to the
        # simplifier, which keeps borders, and a mesh of seams would barely shrink.
        welded = trimesh.Trimesh(vertices=geom.vertices, faces=geom.faces, process=False)
        welded.merge_vertices(merge_tex=True, merge_norm=True)
        points, faces = fast_simplification.simplify(
            np.asarray(welded.vertices, dtype=np.float64),
            np.asarray(welded.faces, dtype=np.int32),
            target_count=target,
        )
        mesh = trimesh.Trimesh(vertices=points, faces=faces, process=False)
        material = _plain_material(original)
        if material is not None:
            mesh.visual = trimesh.visual.TextureVisuals(material=material)  # type: ignore[no-untyped-call]
        elif isinstance(original.visual, trimesh.visual.ColorVisuals) and original.visual.defined:
            mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=original.visual.main_color)
        scene.geometry[name] = mesh
    return scene


def _plain_material(geom: trimesh.Trimesh) -> PBRMaterial | None:
    """The mesh's material without its textures (their UVs do not survive simplification)."""
    material = getattr(geom.visual, "material", None)
    if isinstance(material, PBRMaterial):
        return PBRMaterial(  # type: ignore[no-untyped-call]
            name=material.name,
            baseColorFactor=material.baseColorFactor,
            metallicFactor=material.metallicFactor,
            roughnessFactor=material.roughnessFactor,
            emissiveFactor=material.emissiveFactor,
            doubleSided=material.doubleSided,
        )
    if isinstance(material, SimpleMaterial):
        return PBRMaterial(name=material.name, baseColorFactor=material.diffuse)  # type: ignore[no-untyped-call]
    return None


def _world_mesh(scene: trimesh.Scene) -> trimesh.Trimesh:
    meshes = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry.get(name)
        if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
            mesh = trimesh.Trimesh(vertices=geom.vertices, faces=geom.faces, process=False)
            mesh.apply_transform(transform)
            meshes.append(mesh)
    if not meshes:
        raise BuildError("no_triangles", "a level of the model has no triangles left")
    if len(meshes) == 1:
        return meshes[0]
    joined = trimesh.util.concatenate(meshes)
    assert isinstance(joined, trimesh.Trimesh)
    return joined


def _samples(mesh: trimesh.Trimesh) -> NDArray[np.float64]:
    if float(mesh.area) <= 0.0:
        return np.asarray(mesh.vertices, dtype=np.float64)
    points, _ = trimesh.sample.sample_surface(mesh, SAMPLES, seed=_SEED)
    return np.asarray(points, dtype=np.float64)


class _Surface:
    """A mesh's triangles and a k-d tree of their centroids, built once per mesh."""

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        self.triangles = np.asarray(mesh.triangles, dtype=np.float64)
        self.tree = cKDTree(self.triangles.mean(axis=1))
        self.samples = _samples(mesh)

    def distances(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each point's distance to the nearest of `CANDIDATES` triangles (by centroid):
        exact point-to-triangle distances."""
        k = min(CANDIDATES, len(self.triangles))
        _, nearest = self.tree.query(points, k=k)
        nearest = np.asarray(nearest).reshape(len(points), k)
        repeated = np.repeat(points, k, axis=0)
        closest = trimesh.triangles.closest_point(  # type: ignore[no-untyped-call]
            self.triangles[nearest.ravel()], repeated
        )
        gaps = np.linalg.norm(closest - repeated, axis=1).reshape(len(points), k)
        return np.asarray(gaps.min(axis=1), dtype=np.float64)


def _distance(source: _Surface, level: _Surface) -> tuple[float, float]:
    """Sampled symmetric Hausdorff distance and mean surface distance between two meshes."""
    ab = level.distances(source.samples)
    ba = source.distances(level.samples)
    hausdorff = float(max(np.max(ab), np.max(ba)))
    mean = float((np.mean(ab) + np.mean(ba)) / 2.0)
    return hausdorff, mean
