"""Test models made here with trimesh (no downloads), and raw GLB containers for hostile input."""

from __future__ import annotations

import json
import struct

import numpy as np
import trimesh
from trimesh.transformations import translation_matrix
from trimesh.visual.material import PBRMaterial


def _painted(mesh: trimesh.Trimesh, rgba: tuple[int, int, int, int]) -> trimesh.Trimesh:
    mesh.visual = trimesh.visual.TextureVisuals(material=PBRMaterial(baseColorFactor=rgba))
    return mesh


def sphere_glb(subdivisions: int = 4) -> bytes:
    """An icosphere (20 x 4^n triangles) in a one-node scene."""
    scene = trimesh.Scene()
    scene.add_geometry(_painted(trimesh.creation.icosphere(subdivisions=subdivisions), (200, 30, 30, 255)),
                       node_name="ball", geom_name="ball")  # fmt: skip
    return bytes(scene.export(file_type="glb"))


def two_part_glb() -> bytes:
    """Two meshes on two nodes, one moved: the scene graph a level must keep."""
    scene = trimesh.Scene()
    head = _painted(trimesh.creation.icosphere(subdivisions=4, radius=0.5), (230, 190, 160, 255))
    body = trimesh.creation.icosphere(subdivisions=4)
    body.vertices = np.asarray(body.vertices) * [0.6, 0.6, 1.0]
    scene.add_geometry(_painted(body, (40, 80, 170, 255)), node_name="body", geom_name="body")
    scene.add_geometry(head, node_name="head", geom_name="head",
                       transform=translation_matrix([0, 0, 1.4]))  # fmt: skip
    return bytes(scene.export(file_type="glb"))


def raw_glb(
    doc: object, binary: bytes = b"", *, version: int = 2, length: int | None = None
) -> bytes:
    """A GLB container around `doc` (JSON) and `binary`, as a hostile client could build it."""
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary:
        binary += b"\0" * (-len(binary) % 4)
        body += struct.pack("<II", len(binary), 0x004E4942) + binary
    total = 12 + len(body)
    return struct.pack("<4sII", b"glTF", version, total if length is None else length) + body


def claimed_triangles_glb(count: int) -> bytes:
    """A GLB whose accessor claims `count` indices (3 per triangle) with no data behind it."""
    doc = {
        "asset": {"version": "2.0"},
        "accessors": [{"count": 3, "componentType": 5126, "type": "VEC3"},
                      {"count": count, "componentType": 5125, "type": "SCALAR"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
    }  # fmt: skip
    return raw_glb(doc)
