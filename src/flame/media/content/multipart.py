"""Plain ``multipart/form-data`` uploads for small files, parsed as the body streams in.

The one file part (field ``file``) goes straight to a staging file in batches, hashed on the
way; other fields (``description`` as JSON, ``name``, ``synopsis``, ``tags``, ``reference``,
``sha256``) are kept in memory up to 64 KiB together. A body past the multipart limit is
refused with 413 as soon as it passes it, whatever its Content-Length said.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from flame.media.content.errors import BadRequest, TooLarge

__all__ = ["Form", "parse_form"]

_MAX_FIELDS_BYTES = 64 * 1024
_BATCH = 1024 * 1024


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_type: str | None = None
    size: int = 0
    sha256: str = ""


class _Collector:
    def __init__(self) -> None:
        self.form = Form()
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.part_type = b""
        self.name = ""
        self.is_file = False
        self.data = bytearray()  # the current field's value
        self.file_chunks: list[bytes] = []
        self.field_bytes = 0
        self.files = 0
        self.hasher = hashlib.sha256()

    def on_part_begin(self) -> None:
        self.disposition = b""
        self.part_type = b""
        self.data = bytearray()
        self.is_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self.header_name.lower()
        if name == b"content-disposition":
            self.disposition = self.header_value
        elif name == b"content-type":
            self.part_type = self.header_value
        self.header_name = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        raw = options.get(b"name")
        if raw is None:
            raise BadRequest("a multipart part has no name", code="invalid_form")
        self.name = raw.decode("utf-8", "replace")
        if b"filename" in options:
            if self.name != "file":
                raise BadRequest(f"file part {self.name!r}: send the file as field 'file'",
                                 code="invalid_form")  # fmt: skip
            self.files += 1
            if self.files > 1:
                raise BadRequest("send one file per request", code="invalid_form")
            self.is_file = True
            self.form.filename = options[b"filename"].decode("utf-8", "replace")
            self.form.file_type = self.part_type.decode("latin-1") or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.is_file:
            self.file_chunks.append(chunk)
            self.hasher.update(chunk)
            self.form.size += len(chunk)
            return
        self.field_bytes += len(chunk)
        if self.field_bytes > _MAX_FIELDS_BYTES:
            raise TooLarge("the form's fields pass 64 KiB", code="fields_too_large")
        self.data += chunk

    def on_part_end(self) -> None:
        if not self.is_file:
            if self.name in self.form.fields:
                raise BadRequest(f"the field {self.name!r} is repeated", code="invalid_form")
            self.form.fields[self.name] = self.data.decode("utf-8", "replace")


async def parse_form(
    content_type: str, body: AsyncIterator[bytes], dest: Path, max_bytes: int
) -> Form:
    """Parse the form, writing its file to `dest`; 400/413 for what it cannot take."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("send multipart/form-data with a boundary", code="invalid_form")
    collector = _Collector()
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    })  # fmt: skip
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    total = 0
    with os.fdopen(fd, "wb") as fh:
        async for chunk in body:
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(
                    f"the multipart body passes {max_bytes} bytes; use a tus upload for "
                    "large files",
                    code="multipart_too_large",
                    limit=max_bytes,
                )
            try:
                parser.write(chunk)
            except (BadRequest, TooLarge):
                raise
            except Exception as exc:
                raise BadRequest(f"malformed multipart body: {exc}", code="invalid_form") from None
            if collector.file_chunks and sum(len(c) for c in collector.file_chunks) >= _BATCH:
                data = b"".join(collector.file_chunks)
                collector.file_chunks.clear()
                await asyncio.to_thread(fh.write, data)
        parser.finalize()
        if collector.file_chunks:
            await asyncio.to_thread(fh.write, b"".join(collector.file_chunks))
            collector.file_chunks.clear()
    if collector.files != 1:
        raise BadRequest("the form has no 'file' part", code="invalid_form")
    collector.form.sha256 = collector.hasher.hexdigest()
    return collector.form
