"""A first look at an uploaded glTF 2.0 binary (.glb), before any library parses it.

The checks are cheap and bound the work a hostile upload can cause: the 12-byte header (magic
``glTF``, version 2, a length equal to the bytes received), the JSON chunk (present, first,
at most `MAX_JSON` bytes, an object with ``asset.version`` 2.x), no external references
(a ``uri`` that is not a ``data:`` URI would make a loader read files or the network), the
triangles the meshes declare, from their accessors' counts, against a limit, every
accessor's element count against what that limit can use, and that every accessor reads bytes
of the file (no sparse accessors, none without a buffer view). What this
module does not check (accessor bounds against the binary chunk, buffer views) is left to the
loader, whose failures the caller turns into the same 422 answer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["GlbError", "GlbInfo", "inspect_glb", "without_images"]

MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
MAX_JSON = 8 * 1024 * 1024
_TRIANGLES = 4  # glTF primitive mode; 5 (strip) and 6 (fan) also make triangles
_STRIP, _FAN = 5, 6


class GlbError(ValueError):
    """The upload is not a glTF 2.0 binary we accept; `code` names the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GlbInfo:
    triangles: int
    meshes: int
    primitives: int
    generator: str | None


def inspect_glb(data: bytes, *, max_triangles: int) -> GlbInfo:
    """Check `data` (see the module doc); raise `GlbError` with a clear message."""
    if len(data) < 20:
        raise GlbError("invalid_gltf", f"{len(data)} bytes is too short for a glTF binary")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != MAGIC:
        raise GlbError(
            "invalid_gltf", "not a glTF binary (.glb): the file does not start with 'glTF'"
        )
    if version != 2:
        raise GlbError("unsupported_gltf", f"glTF binary version {version}; only 2 is supported")
    if length != len(data):
        raise GlbError(
            "invalid_gltf", f"the header says {length} bytes but {len(data)} were received"
        )
    doc = _json_chunk(data)
    _check_asset(doc)
    _check_no_external(doc)
    info = _count(doc, max_triangles)
    _check_backed(doc)
    return info


def _check_backed(doc: dict[str, Any]) -> None:
    """Every accessor reads bytes of the file: one without a buffer view (zeros) or a sparse
    one would be allocated by the loader whatever the file's size, so neither is accepted."""
    for i, accessor in enumerate(doc.get("accessors") or []):
        if not isinstance(accessor, dict) or "bufferView" not in accessor or "sparse" in accessor:
            raise GlbError(
                "unsupported_gltf",
                f"accessors[{i}] has no bufferView or is sparse; this SF accepts neither",
            )


def _json_chunk(data: bytes) -> dict[str, Any]:
    chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
    if chunk_type != CHUNK_JSON:
        raise GlbError("invalid_gltf", "the first chunk of a glTF binary must be its JSON")
    if chunk_len > MAX_JSON:
        raise GlbError("too_large", f"the glTF JSON chunk is over {MAX_JSON} bytes")
    if 20 + chunk_len > len(data):
        raise GlbError("invalid_gltf", "the JSON chunk runs past the end of the file")
    try:
        doc = json.loads(data[20 : 20 + chunk_len].rstrip(b" \x00").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlbError("invalid_gltf", f"the glTF JSON chunk does not parse: {exc}") from None
    if not isinstance(doc, dict):
        raise GlbError("invalid_gltf", "the glTF JSON is not an object")
    return doc


def _check_asset(doc: dict[str, Any]) -> None:
    asset = doc.get("asset")
    version = asset.get("version") if isinstance(asset, dict) else None
    if not isinstance(version, str) or not version.startswith("2."):
        raise GlbError("unsupported_gltf", f"asset.version is {version!r}; glTF 2.x is needed")


def _check_no_external(doc: dict[str, Any]) -> None:
    for kind in ("buffers", "images"):
        items = doc.get(kind) or []
        if not isinstance(items, list):
            raise GlbError("invalid_gltf", f"'{kind}' is not a list")
        for i, item in enumerate(items):
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and not uri.startswith("data:"):
                raise GlbError(
                    "external_reference",
                    f"{kind}[{i}] refers to {uri[:80]!r}; upload a self-contained .glb "
                    "(no external files)",
                )


def _count(doc: dict[str, Any], max_triangles: int) -> GlbInfo:
    accessors = doc.get("accessors") or []
    meshes = doc.get("meshes") or []
    if not isinstance(accessors, list) or not isinstance(meshes, list):
        raise GlbError("invalid_gltf", "'accessors' and 'meshes' must be lists")
    # An accessor without a buffer view (zeros, or sparse) is allocated by the loader whatever
    # the file's size: bound every accessor by what the triangle limit can use.
    most = 3 * max_triangles + 3
    for i, accessor in enumerate(accessors):
        count = accessor.get("count") if isinstance(accessor, dict) else None
        if isinstance(count, int) and count > most:
            raise GlbError("too_large", f"accessors[{i}] declares {count} elements; at most "
                           f"{most} fit this SF's limit of {max_triangles} triangles")  # fmt: skip
    triangles = primitives = 0
    for m, mesh in enumerate(meshes):
        prims = mesh.get("primitives") if isinstance(mesh, dict) else None
        if not isinstance(prims, list):
            raise GlbError("invalid_gltf", f"meshes[{m}] has no primitives list")
        for prim in prims:
            primitives += 1
            triangles += _primitive_triangles(prim, accessors, m)
            if triangles > max_triangles:
                raise GlbError(
                    "too_many_triangles",
                    f"the model has more than {max_triangles} triangles, this SF's limit",
                )
    if triangles == 0:
        raise GlbError("no_triangles", "the model has no triangle mesh to simplify")
    asset = doc["asset"]
    generator = asset.get("generator") if isinstance(asset.get("generator"), str) else None
    return GlbInfo(triangles, len(meshes), primitives, generator)


def _primitive_triangles(prim: object, accessors: list[Any], mesh: int) -> int:
    if not isinstance(prim, dict):
        raise GlbError("invalid_gltf", f"a primitive of meshes[{mesh}] is not an object")
    mode = prim.get("mode", _TRIANGLES)
    if mode not in (_TRIANGLES, _STRIP, _FAN):
        return 0  # points and lines: nothing to simplify, kept as they are by the loader
    ref = prim.get("indices")
    if ref is None:
        attrs = prim.get("attributes")
        ref = attrs.get("POSITION") if isinstance(attrs, dict) else None
    if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(accessors):
        raise GlbError("invalid_gltf", f"a primitive of meshes[{mesh}] names no valid accessor")
    accessor = accessors[ref]
    count = accessor.get("count") if isinstance(accessor, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise GlbError("invalid_gltf", f"accessors[{ref}] has no valid count")
    return count // 3 if mode == _TRIANGLES else max(0, count - 2)


_TEXTURE_KEYS = ("normalTexture", "occlusionTexture", "emissiveTexture")
_PBR_TEXTURE_KEYS = ("baseColorTexture", "metallicRoughnessTexture")


def without_images(data: bytes) -> bytes:
    """The same GLB (already checked by `inspect_glb`) without its images, textures and the
    materials' references to them: the simplified levels carry no textures, and an image the
    loader never sees cannot be a decompression bomb. The binary chunk is kept as it is."""
    (chunk_len,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20 : 20 + chunk_len].rstrip(b" \x00").decode("utf-8"))
    for key in ("images", "textures", "samplers"):
        doc.pop(key, None)
    for material in doc.get("materials") or []:
        if not isinstance(material, dict):
            continue
        for key in _TEXTURE_KEYS:
            material.pop(key, None)
        material.pop("extensions", None)  # material extensions may name textures
        pbr = material.get("pbrMetallicRoughness")
        if isinstance(pbr, dict):
            for key in _PBR_TEXTURE_KEYS:
                pbr.pop(key, None)
    for key in ("extensionsUsed", "extensionsRequired"):
        names = doc.get(key)
        if isinstance(names, list):
            doc[key] = [n for n in names if not str(n).startswith(("KHR_texture", "EXT_texture",
                                                                  "KHR_materials"))]  # fmt: skip
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    rest = data[20 + chunk_len :]
    body = struct.pack("<II", len(text), CHUNK_JSON) + text + rest
    return struct.pack("<4sII", MAGIC, 2, 12 + len(body)) + body
