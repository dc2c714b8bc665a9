"""The metadata database (MC-1/12): assets, their descriptions, technical and quality parameters.

An asset's *description* is a JSON document: the default fields (name, synopsis, duration_s,
rights, tags, reference) checked by `DEFAULT_SCHEMA`, plus whatever a provider adds, checked by
the provider's own JSON Schema when its tenant has set one (both apply: the default schema
keeps the fields the platform relies on well-typed). Validation uses the ``jsonschema``
library (Draft 2020-12); every error names the field path, e.g. ``rights.territories[1]``.
A provider schema never reaches the network: ``$ref`` resolves only inside the document.

Technical parameters (container, codecs, resolution, frame rate, bitrate, duration, audio
layout) and quality results (VMAF/PSNR/SSIM, no-reference checks) are kept whole as JSON and
the ones people filter on are also columns (duration_s, width, height, video_codec, ...), so
search is plain indexed SQL on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from referencing.exceptions import Unresolvable

from flame.media.content.db import Database, Tx
from flame.media.content.errors import BadRequest, Invalid, NotFound

__all__ = [
    "DEFAULT_SCHEMA",
    "Catalog",
    "Search",
    "new_id",
    "schema_errors",
]

_MAX_SCHEMA_BYTES = 64 * 1024

DEFAULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://flame.example/schemas/asset-description.json",
    "title": "FLAME asset description (default fields)",
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "synopsis": {"type": "string", "maxLength": 5000},
        "duration_s": {"type": "number", "minimum": 0},
        "tags": {
            "type": "array",
            "maxItems": 50,
            "uniqueItems": True,
            "items": {"type": "string", "pattern": "^[^,\\s][^,\\n]{0,62}$"},
        },
        "rights": {
            "type": "object",
            "properties": {
                "holder": {"type": "string", "maxLength": 200},
                "license": {"type": "string", "maxLength": 200},
                "territories": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^([A-Z]{2}|WORLD)$"},
                },
                "valid_from": {"type": "string", "format": "date"},
                "valid_until": {"type": "string", "format": "date"},
                "notes": {"type": "string", "maxLength": 2000},
            },
            "additionalProperties": False,
        },
        "reference": {
            "description": "the id of the asset this one was made from (its source), for VMAF",
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
        },
    },
}

_DDL = (
    """CREATE TABLE IF NOT EXISTS assets (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        published INTEGER NOT NULL DEFAULT 0,
        synopsis TEXT,
        duration_s REAL,
        width INTEGER,
        height INTEGER,
        video_codec TEXT,
        audio_codec TEXT,
        container TEXT,
        fps REAL,
        bitrate BIGINT,
        vmaf REAL,
        reference TEXT,
        job TEXT,
        description JSON NOT NULL,
        technical JSON,
        quality JSON,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS assets_tenant ON assets (tenant, created_at)",
    "CREATE INDEX IF NOT EXISTS assets_duration ON assets (tenant, duration_s)",
    "CREATE INDEX IF NOT EXISTS assets_height ON assets (tenant, height)",
    """CREATE TABLE IF NOT EXISTS asset_tags (
        asset TEXT NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
        tenant TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (asset, tag)
    )""",
    "CREATE INDEX IF NOT EXISTS asset_tags_tag ON asset_tags (tenant, tag)",
    """CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        length BIGINT NOT NULL,
        received BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        description JSON NOT NULL,
        content_type TEXT NOT NULL,
        sha256_expected TEXT,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS uploads_tenant ON uploads (tenant, state)",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        asset TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        reference TEXT,
        error TEXT,
        result JSON,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_asset ON jobs (asset)",
    """CREATE TABLE IF NOT EXISTS tenant_settings (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        value JSON NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant, name)
    )""",
)

_ASSET_JSON = ("description", "technical", "quality")


def new_id(prefix: str = "") -> str:
    """96 random bits, URL- and path-safe."""
    return prefix + secrets.token_hex(12)


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def schema_errors(validator: Draft202012Validator, doc: Any) -> list[dict[str, str]]:
    """Every error as {path, message}, sorted by path; ``required`` names the missing field."""
    found: list[dict[str, str]] = []
    for err in validator.iter_errors(doc):
        parts = list(err.absolute_path)
        if err.validator == "required" and isinstance(err.validator_value, list):
            missing = [p for p in err.validator_value if isinstance(err.instance, dict)]
            missing = [p for p in missing if p not in err.instance]
            if missing:
                parts.append(missing[0])
        found.append({"path": _path(parts), "message": err.message, "rule": str(err.validator)})
    found.sort(key=lambda e: (e["path"], e["message"]))
    return found


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


_DEFAULT_VALIDATOR = _validator(DEFAULT_SCHEMA)


@dataclass
class Search:
    q: str | None = None
    tags: list[str] = field(default_factory=list)
    min_duration: float | None = None
    max_duration: float | None = None
    codec: str | None = None
    resolution: str | None = None  # WxH
    min_height: int | None = None
    max_height: int | None = None
    min_vmaf: float | None = None
    status: str | None = None
    published: bool | None = None
    limit: int = 50
    offset: int = 0
    sort: str = "-created"


_SORTS = {
    "created": "created_at",
    "name": "name",
    "duration": "duration_s",
    "height": "height",
    "size": "size",
    "vmaf": "vmaf",
}


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.script(_DDL)
        self._schemas: dict[str, tuple[float, Draft202012Validator | None]] = {}

    # -- descriptions and schemas -----------------------------------------------------------

    async def provider_schema(self, tenant: str) -> dict[str, Any] | None:
        value = await self.setting(tenant, "schema")
        return value if isinstance(value, dict) else None

    async def set_provider_schema(self, tenant: str, schema: Any) -> None:
        if not isinstance(schema, dict):
            raise BadRequest("a JSON Schema must be a JSON object", code="invalid_schema")
        if len(json.dumps(schema)) > _MAX_SCHEMA_BYTES:
            raise BadRequest(f"the schema is over {_MAX_SCHEMA_BYTES} bytes", code="invalid_schema")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise BadRequest(
                f"not a valid JSON Schema at {_path(list(exc.absolute_path))}: {exc.message}",
                code="invalid_schema",
                path=_path(list(exc.absolute_path)),
            ) from None
        try:  # a $ref outside the document is never fetched: refuse it now, not at each use
            list(_validator(schema).iter_errors({}))
        except Unresolvable as exc:
            raise BadRequest(
                f"the schema refers to what it does not contain: {exc} ($ref is resolved "
                "inside the document only)",
                code="invalid_schema",
            ) from None
        await self.set_setting(tenant, "schema", schema)
        self._schemas.pop(tenant, None)

    async def delete_provider_schema(self, tenant: str) -> None:
        await self.db.execute(
            "DELETE FROM tenant_settings WHERE tenant = ? AND name = ?", (tenant, "schema")
        )
        self._schemas.pop(tenant, None)

    async def validate(self, tenant: str, description: Any) -> dict[str, Any]:
        """The description if both schemas accept it; else `Invalid` (422) listing each error."""
        errors = schema_errors(_DEFAULT_VALIDATOR, description)
        provider = await self._provider_validator(tenant)
        if provider is not None:
            try:
                errors += [
                    {**e, "schema": "provider"} for e in schema_errors(provider, description)
                ]
            except (Unresolvable, SchemaError, RecursionError) as exc:
                raise Invalid(
                    f"the provider schema cannot be applied: {exc}", code="provider_schema_error"
                ) from None
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise Invalid(
                f"description invalid at {first['path']}: {first['message']}{more}",
                code="invalid_description",
                errors=errors,
            )
        assert isinstance(description, dict)
        return description

    async def _provider_validator(self, tenant: str) -> Draft202012Validator | None:
        cached = self._schemas.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < 2.0:
            return cached[1]
        schema = await self.provider_schema(tenant)
        validator = _validator(schema) if schema is not None else None
        self._schemas[tenant] = (time.monotonic(), validator)
        return validator

    # -- settings ---------------------------------------------------------------------------

    async def setting(self, tenant: str, name: str) -> Any:
        rows = await self.db.query(
            "SELECT value FROM tenant_settings WHERE tenant = ? AND name = ?", (tenant, name)
        )
        return _load(rows[0]["value"]) if rows else None

    async def set_setting(self, tenant: str, name: str, value: Any) -> None:
        doc = json.dumps(value)

        def put(tx: Tx) -> None:
            tx.execute("DELETE FROM tenant_settings WHERE tenant = ? AND name = ?", (tenant, name))
            tx.execute(
                "INSERT INTO tenant_settings (tenant, name, value, updated_at) VALUES (?, ?, ?, ?)",
                (tenant, name, doc, time.time()),
            )

        await self.db.transaction(put)

    # -- assets -----------------------------------------------------------------------------

    async def create_asset(
        self,
        *,
        asset_id: str,
        tenant: str,
        owner: str,
        description: dict[str, Any],
        content_type: str,
        size: int,
        sha256: str,
        storage_key: str,
        status: str,
    ) -> dict[str, Any]:
        now = time.time()
        tags = [str(t) for t in description.get("tags", [])]

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO assets (id, tenant, owner, name, content_type, size, sha256, "
                "storage_key, status, synopsis, duration_s, reference, description, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    asset_id, tenant, owner, description["name"], content_type, size, sha256,
                    storage_key, status, description.get("synopsis"),
                    description.get("duration_s"), description.get("reference"),
                    json.dumps(description), now, now,
                ),
            )  # fmt: skip
            for tag in tags:
                tx.execute(
                    "INSERT INTO asset_tags (asset, tenant, tag) VALUES (?, ?, ?)",
                    (asset_id, tenant, tag.lower()),
                )

        await self.db.transaction(insert)
        return await self.get(tenant, asset_id)

    async def get(self, tenant: str, asset_id: str) -> dict[str, Any]:
        rows = await self.db.query(
            "SELECT * FROM assets WHERE id = ? AND tenant = ?", (asset_id, tenant)
        )
        if not rows:
            raise NotFound(f"no asset {asset_id!r}", code="asset_not_found")
        return (await self._expand(rows))[0]

    async def get_published(self, asset_id: str) -> dict[str, Any]:
        rows = await self.db.query(
            "SELECT * FROM assets WHERE id = ? AND published = 1", (asset_id,)
        )
        if not rows:
            raise NotFound(f"no published asset {asset_id!r}", code="asset_not_found")
        return (await self._expand(rows))[0]

    async def _expand(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            for key in _ASSET_JSON:
                row[key] = _load(row[key])
            row["published"] = bool(row["published"])
            row["tags"] = [str(t) for t in row["description"].get("tags", [])]
            out.append(row)
        return out

    async def update_description(
        self, tenant: str, asset_id: str, description: dict[str, Any]
    ) -> dict[str, Any]:
        await self.get(tenant, asset_id)
        tags = [str(t) for t in description.get("tags", [])]

        def update(tx: Tx) -> None:
            tx.execute(
                "UPDATE assets SET name = ?, synopsis = ?, reference = ?, description = ?, "
                "duration_s = COALESCE(?, duration_s), updated_at = ? WHERE id = ? AND tenant = ?",
                (
                    description["name"], description.get("synopsis"),
                    description.get("reference"), json.dumps(description),
                    description.get("duration_s"), time.time(), asset_id, tenant,
                ),
            )  # fmt: skip
            tx.execute("DELETE FROM asset_tags WHERE asset = ?", (asset_id,))
            for tag in tags:
                tx.execute(
                    "INSERT INTO asset_tags (asset, tenant, tag) VALUES (?, ?, ?)",
                    (asset_id, tenant, tag.lower()),
                )

        await self.db.transaction(update)
        return await self.get(tenant, asset_id)

    async def set_status(
        self, asset_id: str, status: str, reason: str | None = None, *, job: str | None = None
    ) -> None:
        if job is not None:
            await self.db.execute(
                "UPDATE assets SET status = ?, reason = ?, job = ?, updated_at = ? WHERE id = ?",
                (status, reason, job, time.time(), asset_id),
            )
        else:
            await self.db.execute(
                "UPDATE assets SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                (status, reason, time.time(), asset_id),
            )

    async def set_published(self, tenant: str, asset_id: str, published: bool) -> None:
        await self.get(tenant, asset_id)
        await self.db.execute(
            "UPDATE assets SET published = ?, updated_at = ? WHERE id = ? AND tenant = ?",
            (int(published), time.time(), asset_id, tenant),
        )

    async def set_analysis(
        self,
        asset_id: str,
        *,
        technical: dict[str, Any],
        quality: dict[str, Any],
        status: str,
        reason: str | None,
    ) -> None:
        video = technical.get("video") or {}
        audio = technical.get("audio") or {}
        fr = quality.get("full_reference") or {}
        await self.db.execute(
            "UPDATE assets SET technical = ?, quality = ?, status = ?, reason = ?, "
            "duration_s = ?, width = ?, height = ?, video_codec = ?, audio_codec = ?, "
            "container = ?, fps = ?, bitrate = ?, vmaf = ?, updated_at = ? WHERE id = ?",
            (
                json.dumps(technical), json.dumps(quality), status, reason,
                technical.get("duration_s"), video.get("width"), video.get("height"),
                video.get("codec"), audio.get("codec"), technical.get("container"),
                video.get("fps"), technical.get("bitrate"), fr.get("vmaf"), time.time(),
                asset_id,
            ),
        )  # fmt: skip

    async def delete(self, tenant: str, asset_id: str) -> dict[str, Any]:
        asset = await self.get(tenant, asset_id)

        def drop(tx: Tx) -> None:
            tx.execute("DELETE FROM asset_tags WHERE asset = ?", (asset_id,))
            tx.execute("DELETE FROM jobs WHERE asset = ?", (asset_id,))
            tx.execute("DELETE FROM assets WHERE id = ? AND tenant = ?", (asset_id, tenant))

        await self.db.transaction(drop)
        return asset

    async def search(self, tenant: str, s: Search) -> dict[str, Any]:
        where = ["a.tenant = ?"]
        params: list[Any] = [tenant]
        if s.q:
            like = _like(s.q)
            where.append(
                "(lower(a.name) LIKE ? ESCAPE '\\' OR lower(COALESCE(a.synopsis, '')) LIKE ? "
                "ESCAPE '\\' OR EXISTS (SELECT 1 FROM asset_tags t WHERE t.asset = a.id AND "
                "t.tag LIKE ? ESCAPE '\\'))"
            )
            params += [like, like, like]
        for tag in s.tags:
            where.append("EXISTS (SELECT 1 FROM asset_tags t WHERE t.asset = a.id AND t.tag = ?)")
            params.append(tag.lower())
        if s.min_duration is not None:
            where.append("a.duration_s >= ?")
            params.append(s.min_duration)
        if s.max_duration is not None:
            where.append("a.duration_s <= ?")
            params.append(s.max_duration)
        if s.codec:
            where.append("(lower(a.video_codec) = ? OR lower(a.audio_codec) = ?)")
            params += [s.codec.lower(), s.codec.lower()]
        if s.resolution:
            w, sep, h = s.resolution.lower().partition("x")
            if not (sep and w.isdigit() and h.isdigit()):
                raise BadRequest(f"resolution {s.resolution!r} is not WIDTHxHEIGHT, e.g. 1920x1080")
            where.append("a.width = ? AND a.height = ?")
            params += [int(w), int(h)]
        if s.min_height is not None:
            where.append("a.height >= ?")
            params.append(s.min_height)
        if s.max_height is not None:
            where.append("a.height <= ?")
            params.append(s.max_height)
        if s.min_vmaf is not None:
            where.append("a.vmaf >= ?")
            params.append(s.min_vmaf)
        if s.status:
            where.append("a.status = ?")
            params.append(s.status)
        if s.published is not None:
            where.append("a.published = ?")
            params.append(int(s.published))
        key = s.sort.lstrip("-")
        if key not in _SORTS:
            raise BadRequest(
                f"sort {s.sort!r}: use one of {sorted(_SORTS)} (prefix - for descending)"
            )
        order = f"{_SORTS[key]} {'DESC' if s.sort.startswith('-') else 'ASC'}, a.id"
        limit = max(1, min(s.limit, 500))
        offset = max(0, s.offset)
        clause = " AND ".join(where)

        def run(tx: Tx) -> tuple[int, list[dict[str, Any]]]:
            total = tx.query(f"SELECT count(*) AS n FROM assets a WHERE {clause}", params)
            rows = tx.query(
                f"SELECT a.* FROM assets a WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            return int(total[0]["n"]), rows

        total, rows = await self.db.transaction(run)
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "assets": await self._expand(rows),
        }

    async def usage(self, tenant: str) -> dict[str, int]:
        """Bytes stored and bytes reserved by open uploads (their whole declared length)."""

        def run(tx: Tx) -> dict[str, int]:
            stored = tx.query(
                "SELECT count(*) AS n, COALESCE(sum(size), 0) AS b FROM assets WHERE tenant = ?",
                (tenant,),
            )[0]
            reserved = tx.query(
                "SELECT count(*) AS n, COALESCE(sum(length), 0) AS b FROM uploads "
                "WHERE tenant = ? AND state IN ('receiving', 'complete')",
                (tenant,),
            )[0]
            return {
                "assets": int(stored["n"]),
                "stored_bytes": int(stored["b"]),
                "uploads": int(reserved["n"]),
                "reserved_bytes": int(reserved["b"]),
            }

        return await self.db.transaction(run)


def _load(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return json.loads(value)
