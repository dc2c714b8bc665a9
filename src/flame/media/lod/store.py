"""Models and their levels of detail on disk, per tenant, with an in-memory index.

    <data>/<tenant>/<model>/v-<id>/source.glb, lod-<percent>.glb ..., manifest.json

A new upload is built in a temporary directory and renamed into a new version directory; the
index then points at it and older versions are removed. A reader holds the `Model` it looked
up, whose directory is one version: it reads that version's files, or, if a newer upload
removed them before it opened one, gets a clear "replaced" answer, never a mix of two
versions; a file it has open stays readable until it is done. The index (tenant, model) ->
manifest is rebuilt from the newest version of each model at start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MODEL_NAME", "Model", "ModelStore"]

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True, slots=True)
class Model:
    tenant: str
    name: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def levels(self) -> list[dict[str, Any]]:
        return list(self.manifest["lods"])

    def level(self, lod: str) -> dict[str, Any] | None:
        return next((lv for lv in self.manifest["lods"] if lv["lod"] == lod), None)

    def path(self, lod: str) -> Path:
        return self.directory / f"lod-{lod}.glb"

    @property
    def stored_bytes(self) -> int:
        return int(self.manifest["source"]["bytes"]) + sum(
            int(lv["bytes"]) for lv in self.manifest["lods"] if lv["lod"] != "100"
        )


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[tuple[str, str], Model] = {}

    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for tenant_dir in sorted(self.root.iterdir()):
            if not tenant_dir.is_dir() or not _TENANT.fullmatch(tenant_dir.name):
                continue
            for model_dir in sorted(tenant_dir.iterdir()):
                if model_dir.name.startswith("."):
                    shutil.rmtree(model_dir, ignore_errors=True)  # an interrupted build or delete
                    continue
                self._load_model(tenant_dir.name, model_dir)

    def _load_model(self, tenant: str, model_dir: Path) -> None:
        versions = sorted(model_dir.glob("v-*/manifest.json"), key=lambda p: p.stat().st_mtime)
        for stale in versions[:-1]:
            shutil.rmtree(stale.parent, ignore_errors=True)
        if not versions:
            log.warning("skipping %s: no version with a manifest", model_dir)
            return
        try:
            manifest = json.loads(versions[-1].read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: no readable manifest (%s)", model_dir, exc)
            return
        self.models[(tenant, model_dir.name)] = Model(
            tenant, model_dir.name, versions[-1].parent, manifest
        )

    def get(self, tenant: str, name: str) -> Model | None:
        return self.models.get((tenant, name))

    def of(self, tenant: str) -> list[Model]:
        return [m for (t, _), m in sorted(self.models.items()) if t == tenant]

    def usage(self, tenant: str) -> int:
        return sum(m.stored_bytes for m in self.of(tenant))

    def staging(self, tenant: str) -> Path:
        path = self.root / tenant / f".build-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def commit(self, tenant: str, name: str, staged: Path, manifest: dict[str, Any]) -> Model:
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1))
        parent = self.root / tenant / name
        parent.mkdir(exist_ok=True)
        version = parent / f"v-{uuid.uuid4().hex}"
        os.rename(staged, version)
        model = Model(tenant, name, version, manifest)
        self.models[(tenant, name)] = model
        for old in parent.iterdir():
            if old != version:
                shutil.rmtree(old, ignore_errors=True)
        return model

    def delete(self, tenant: str, name: str) -> bool:
        model = self.models.pop((tenant, name), None)
        if model is None:
            return False
        gone = self.root / tenant / f".old-{uuid.uuid4().hex}"
        os.rename(model.directory.parent, gone)
        shutil.rmtree(gone, ignore_errors=True)
        return True
