"""Makes the models shipped in this image (models/*.glb) from trimesh primitives, so the repository
holds no third-party art: `python examples/sf/gnome-assets/make_models.py`. Deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from trimesh.transformations import rotation_matrix, translation_matrix
from trimesh.visual.material import PBRMaterial

OUT = Path(__file__).with_name("models")


def _part(mesh: trimesh.Trimesh, rgba: tuple[int, int, int, int]) -> trimesh.Trimesh:
    mesh.visual = trimesh.visual.TextureVisuals(
        material=PBRMaterial(baseColorFactor=rgba, roughnessFactor=0.8, metallicFactor=0.0)
    )
    return mesh


def _blob(subdivisions: int, radius: float, height: float, taper: float) -> trimesh.Trimesh:
    """An icosphere stretched to `height` and narrowed towards its top by `taper` (0: none,
    1: to a point): smooth, well-shaped triangles that a simplifier can reduce evenly."""
    ico = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.array(ico.vertices)
    t = (v[:, 2] + 1.0) / 2.0
    shrink = (1.0 - taper * t) * radius
    v[:, 0] *= shrink
    v[:, 1] *= shrink
    v[:, 2] = t * height
    return trimesh.Trimesh(vertices=v, faces=ico.faces)


def gnome() -> trimesh.Scene:
    scene = trimesh.Scene()
    beard = _blob(4, 0.15, 0.3, 0.9)
    beard.apply_transform(rotation_matrix(np.pi, [1, 0, 0]))
    parts = [
        ("body", _blob(4, 0.32, 0.72, 0.7), (40, 80, 170, 255), [0, 0, 0]),
        ("head", trimesh.creation.icosphere(subdivisions=5, radius=0.17), (235, 190, 160, 255),
         [0, 0, 0.78]),
        ("nose", trimesh.creation.icosphere(subdivisions=3, radius=0.045), (220, 140, 120, 255),
         [0, 0.17, 0.78]),
        ("hat", _blob(4, 0.19, 0.5, 0.98), (200, 30, 30, 255), [0, 0, 0.86]),
        ("beard", beard, (245, 245, 245, 255), [0, 0.09, 0.72]),
    ]  # fmt: skip
    for name, mesh, rgba, at in parts:
        scene.add_geometry(_part(mesh, rgba), node_name=name, geom_name=name,
                           transform=translation_matrix(at))  # fmt: skip
    return scene


def toadstool() -> trimesh.Scene:
    scene = trimesh.Scene()
    stem = _blob(4, 0.09, 0.42, 0.2)
    cap = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    cap.apply_scale([1.0, 1.0, 0.45])
    scene.add_geometry(_part(stem, (240, 235, 220, 255)), node_name="stem", geom_name="stem")
    scene.add_geometry(_part(cap, (210, 20, 30, 255)), node_name="cap", geom_name="cap",
                       transform=translation_matrix([0, 0, 0.42]))  # fmt: skip
    return scene


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, make in (("gnome", gnome), ("toadstool", toadstool)):
        data = make().export(file_type="glb")
        (OUT / f"{name}.glb").write_bytes(data)
        print(name, len(data), "bytes")
