"""MC-11: levels of detail made by the simplification library, and measured."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.media.lod.build import BuildError, build_lods
from flame.media.lod.glb import GlbError, inspect_glb, without_images
from flame.media.lod.store import ModelStore

from .meshes import claimed_triangles_glb, raw_glb, sphere_glb, two_part_glb


def test_mc11_levels_shrink_and_their_error_grows(tmp_path: Path) -> None:
    data = sphere_glb(5)  # 20,480 triangles
    levels = build_lods(data, [100, 50, 20, 5], tmp_path)
    assert [lv.percent for lv in levels] == [100, 50, 20, 5]
    tris = [lv.triangles for lv in levels]
    assert tris[0] == 20_480
    for lv in levels[1:]:  # each level close to its share of the source's triangles
        assert abs(lv.triangles - 20_480 * lv.percent / 100) <= 0.05 * 20_480 * lv.percent / 100 + 8
    assert tris == sorted(tris, reverse=True)
    assert len(set(tris)) == 4
    sizes = [lv.size for lv in levels]
    assert sizes == sorted(sizes, reverse=True)
    errors = [lv.hausdorff for lv in levels]
    means = [lv.mean_distance for lv in levels]
    assert errors[0] == 0.0
    assert means[0] == 0.0
    assert errors == sorted(errors)
    assert errors[1] > 0
    assert means == sorted(means)
    assert means[1] > 0
    # A unit sphere simplified to 5 % still lies within a few percent of its size.
    assert levels[-1].relative_hausdorff < 0.05
    # The 100 % level is the upload itself, byte for byte.
    assert (tmp_path / "lod-100.glb").read_bytes() == data


def test_levels_are_valid_gltf_the_library_rereads(tmp_path: Path) -> None:
    levels = build_lods(two_part_glb(), [100, 30], tmp_path)
    for lv in levels:
        body = (tmp_path / f"lod-{lv.percent}.glb").read_bytes()
        info = inspect_glb(body, max_triangles=10**6)  # our own container check
        assert info.triangles == lv.triangles
        scene = trimesh.load(io.BytesIO(body), file_type="glb", force="scene")
        assert isinstance(scene, trimesh.Scene)  # force="scene"
        # The scene graph survives: both nodes, the head still 1.4 above the body.
        assert set(scene.graph.nodes_geometry) == {"body", "head"}
        transform, _ = scene.graph["head"]
        assert transform[2, 3] == pytest.approx(1.4)
        assert sum(len(g.faces) for g in scene.geometry.values()) == lv.triangles
        colour = scene.geometry["body"].visual.material.baseColorFactor
        assert list(colour[:3]) == [40, 80, 170]  # the material's colour is kept


def test_a_loader_failure_is_a_build_error(tmp_path: Path) -> None:
    doc = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": 36}],
        "bufferViews": [{"buffer": 0, "byteLength": 36}],
        "accessors": [{"bufferView": 0, "count": 3000, "componentType": 5126, "type": "VEC3"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
    }
    with pytest.raises(BuildError) as err:
        build_lods(raw_glb(doc, b"\0" * 36), [100, 50], tmp_path)
    assert err.value.code in ("invalid_gltf", "no_triangles")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"PK\x03\x04" + b"\0" * 40, "invalid_gltf"),
        (raw_glb({"asset": {"version": "2.0"}}, version=1), "unsupported_gltf"),
        (raw_glb({"asset": {"version": "2.0"}}, length=99999), "invalid_gltf"),
        (raw_glb({"asset": {"version": "1.0"}}), "unsupported_gltf"),
        (raw_glb([1, 2, 3]), "invalid_gltf"),
        (raw_glb({"asset": {"version": "2.0"}, "buffers": [{"uri": "file:///etc/passwd"}]}),
         "external_reference"),
        (raw_glb({"asset": {"version": "2.0"}, "images": [{"uri": "../../secret.png"}]}),
         "external_reference"),
        (raw_glb({"asset": {"version": "2.0"}, "meshes": []}), "no_triangles"),
        (claimed_triangles_glb(3 * 2_000_001), "too_many_triangles"),
        (raw_glb({"asset": {"version": "2.0"}, "accessors": [{"count": 10**9, "sparse": {}}]}),
         "too_large"),
        (claimed_triangles_glb(3 * 1000), "unsupported_gltf"),  # no bytes behind the accessors
        (raw_glb({"asset": {"version": "2.0"}, "meshes": [{"primitives": [{"indices": 7}]}]}),
         "invalid_gltf"),
    ],
)  # fmt: skip
def test_hostile_containers_are_refused_before_parsing(data: bytes, code: str) -> None:
    with pytest.raises(GlbError) as err:
        inspect_glb(data, max_triangles=2_000_000)
    assert err.value.code == code
    assert err.value.message


def test_the_store_keeps_one_version_and_reloads_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.load()
    for data in (sphere_glb(1), sphere_glb(2)):
        staged = store.staging("demo")
        levels = build_lods(data, [100, 50], staged)
        store.commit("demo", "ball", staged, {"source": {"bytes": len(data)},
                                               "lods": [lv.as_dict() for lv in levels]})  # fmt: skip
    model = store.get("demo", "ball")
    assert model is not None
    assert model.path("100").read_bytes() == sphere_glb(2)
    assert [p.name for p in (tmp_path / "demo" / "ball").iterdir()] == [model.directory.name]
    (tmp_path / "demo" / ".build-interrupted").mkdir()
    again = ModelStore(tmp_path)
    again.load()  # a restart: the same model, the interrupted build swept away
    reloaded = again.get("demo", "ball")
    assert reloaded is not None
    assert reloaded.directory == model.directory
    assert not (tmp_path / "demo" / ".build-interrupted").exists()
    assert again.delete("demo", "ball")
    assert again.get("demo", "ball") is None
    assert list((tmp_path / "demo").iterdir()) == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**7) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["asset", "version", "meshes", "primitives", "accessors", "count", "indices",
                         "attributes", "POSITION", "mode", "buffers", "images", "uri", "generator"]),
        inner, max_size=5),
    max_leaves=30,
)  # fmt: skip


@given(st.binary(max_size=200) | JSON.map(raw_glb))
@settings(max_examples=300, deadline=None)
def test_any_upload_is_accepted_or_refused_with_a_code(data: bytes) -> None:
    """Hostile input: the container check never fails any other way than a `GlbError`."""
    code, info = None, None
    try:
        info = inspect_glb(data, max_triangles=1000)
    except GlbError as exc:
        code = exc.code
    if info is None:
        assert code in {"invalid_gltf", "unsupported_gltf", "external_reference", "no_triangles",
                        "too_many_triangles", "too_large"}  # fmt: skip
    else:
        assert 0 < info.triangles <= 1000


def test_images_never_reach_the_loader(tmp_path: Path) -> None:
    """Simplified levels carry no textures, so the loader is given none to decode (an image
    can be a decompression bomb); the 100 % level keeps them, byte for byte."""
    mesh = trimesh.creation.icosphere(subdivisions=3)
    scene = trimesh.Scene()
    scene.add_geometry(mesh, node_name="ball", geom_name="ball")
    plain = bytes(scene.export(file_type="glb"))
    (n,) = struct.unpack_from("<I", plain, 12)
    doc = json.loads(plain[20 : 20 + n])
    binary = plain[20 + n + 8 :]
    doc["buffers"][0]["byteLength"] = len(binary) + 8
    doc["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": 8})
    doc["images"] = [{"bufferView": len(doc["bufferViews"]) - 1, "mimeType": "image/png"}]
    doc["textures"] = [{"source": 0}]
    doc["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                  "baseColorFactor": [1, 0, 0, 1]},
                         "normalTexture": {"index": 0}}]  # fmt: skip
    doc["meshes"][0]["primitives"][0]["material"] = 0
    textured = raw_glb(doc, binary + b"\x89PNGjunk")
    inspect_glb(textured, max_triangles=10**6)
    stripped = without_images(textured)
    left, left_binary = _chunks(stripped)
    assert "images" not in left
    assert "textures" not in left
    assert left["materials"] == [{"pbrMetallicRoughness": {"baseColorFactor": [1, 0, 0, 1]}}]
    assert left_binary == _chunks(textured)[1]  # the binary chunk as it was
    levels = build_lods(textured, [100, 50], tmp_path)
    assert (tmp_path / "lod-100.glb").read_bytes() == textured
    assert levels[1].triangles == levels[0].triangles // 2


def _chunks(glb: bytes) -> tuple[dict[str, object], bytes]:
    """(the JSON, the bytes after the JSON chunk) of a GLB."""
    (n,) = struct.unpack_from("<I", glb, 12)
    return json.loads(glb[20 : 20 + n]), glb[20 + n :]
