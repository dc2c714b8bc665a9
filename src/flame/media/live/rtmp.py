"""Reading the stream key an RTMP encoder publishes, from the bytes it sends.

ffmpeg's RTMP listen mode accepts whatever stream name a client publishes (a mismatch is only
a warning), so the SF cannot delegate authentication to it. The RTMP front (`front.py`) relays
each connection to an ffmpeg of its own and feeds the client's bytes to a `PublishSniffer`
until the ``publish`` command names the stream; only then is the feed admitted or the
connection cut. The sniffer de-chunks the client-to-server direction (RTMP 1.0, section 5.3:
basic header, message header formats 0-3, extended timestamps, Set Chunk Size) and decodes
the AMF0 command; it never touches what ffmpeg answers.

Bounds: a message larger than `MAX_MESSAGE` or more than `MAX_SNIFF` bytes without a
``publish`` is a `RtmpRefused` (the caller closes the connection).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HANDSHAKE_BYTES", "MAX_MESSAGE", "MAX_SNIFF", "PublishSniffer", "RtmpRefused"]

HANDSHAKE_BYTES = 1 + 1536 + 1536  # C0, C1, C2
MAX_MESSAGE = 64 * 1024  # commands before publish are small; media before publish is not allowed
MAX_SNIFF = 256 * 1024
_SET_CHUNK_SIZE = 1
_AMF3_COMMAND = 17
_AMF0_COMMAND = 20
_AMF_NUMBER, _AMF_BOOL, _AMF_STRING, _AMF_OBJECT, _AMF_NULL = 0x00, 0x01, 0x02, 0x03, 0x05
_AMF_UNDEFINED, _AMF_ECMA_ARRAY, _AMF_OBJECT_END = 0x06, 0x08, 0x09


class RtmpRefused(ValueError):
    """The client's bytes are not an RTMP publish we can read within the bounds."""


@dataclass(slots=True)
class _ChunkStream:
    timestamp_field: int = 0
    length: int = 0
    type_id: int = 0
    extended: bool = False
    buffer: bytearray | None = None


class PublishSniffer:
    """Feed client bytes with `feed`; `stream_name` is set once the publish command is read."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0  # first byte of `_data` not yet consumed
        self._handshake_left = HANDSHAKE_BYTES
        self._chunk_size = 128
        self._streams: dict[int, _ChunkStream] = {}
        self.seen = 0
        self.stream_name: str | None = None
        self.commands: list[str] = []

    def feed(self, data: bytes) -> str | None:
        """Consume `data`; returns the published stream name once known (then always)."""
        if self.stream_name is not None:
            return self.stream_name
        self.seen += len(data)
        if self.seen > MAX_SNIFF:
            raise RtmpRefused(f"no publish command in the first {MAX_SNIFF} bytes")
        self._data += data
        if self._handshake_left:
            take = min(self._handshake_left, len(self._data))
            if self._handshake_left == HANDSHAKE_BYTES and take and self._data[0] != 3:
                raise RtmpRefused(f"RTMP version {self._data[0]} (only 3 is spoken)")
            self._handshake_left -= take
            del self._data[:take]
        while self.stream_name is None and self._chunk():
            pass
        del self._data[: self._pos]
        self._pos = 0
        return self.stream_name

    def _take(self, n: int) -> bytes | None:
        if len(self._data) - self._pos < n:
            return None
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def _chunk(self) -> bool:
        """Read one whole chunk; False (nothing consumed) when more bytes are needed."""
        start = self._pos
        parsed = self._read_chunk()
        if parsed is None:
            self._pos = start
            return False
        return True

    def _read_chunk(self) -> bool | None:
        head = self._take(1)
        if head is None:
            return None
        fmt, csid = head[0] >> 6, head[0] & 0x3F
        if csid in (0, 1):
            more = self._take(csid + 1)
            if more is None:
                return None
            csid = 64 + more[0] + (more[1] * 256 if csid == 1 else 0)
        known = self._streams.get(csid)
        if known is None and fmt != 0:
            raise RtmpRefused(f"chunk stream {csid} starts without a full header")
        cs = known or _ChunkStream()
        header_len = (11, 7, 3, 0)[fmt]
        header = self._take(header_len)
        if header is None:
            return None
        timestamp_field, length, type_id = cs.timestamp_field, cs.length, cs.type_id
        if fmt <= 2:
            timestamp_field = int.from_bytes(header[0:3], "big")
        if fmt <= 1:
            length = int.from_bytes(header[3:6], "big")
            type_id = header[6]
        extended = timestamp_field == 0xFFFFFF if fmt <= 2 else cs.extended
        if extended and self._take(4) is None:
            return None
        if length > MAX_MESSAGE:
            raise RtmpRefused(f"a {length}-byte message before publish (limit {MAX_MESSAGE})")
        buffer = cs.buffer if cs.buffer is not None and fmt == 3 else bytearray()
        payload = self._take(min(self._chunk_size, length - len(buffer)))
        if payload is None:
            return None
        # The chunk is whole: commit the header state.
        cs.timestamp_field, cs.length, cs.type_id, cs.extended = (
            timestamp_field, length, type_id, extended,
        )  # fmt: skip
        self._streams[csid] = cs
        buffer += payload
        if len(buffer) < length:
            cs.buffer = buffer
            return True
        cs.buffer = None
        self._message(type_id, bytes(buffer))
        return True

    def _message(self, type_id: int, body: bytes) -> None:
        if type_id == _SET_CHUNK_SIZE:
            if len(body) < 4:
                raise RtmpRefused("a short Set Chunk Size message")
            size = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            if not 1 <= size <= 0xFFFFFF:
                raise RtmpRefused(f"chunk size {size} is out of range")
            self._chunk_size = size
        elif type_id in (_AMF0_COMMAND, _AMF3_COMMAND):
            values = _amf0_values(body[1:] if type_id == _AMF3_COMMAND else body, limit=4)
            if values and isinstance(values[0], str):
                self.commands.append(values[0])
                if values[0] == "publish":
                    name = values[3] if len(values) > 3 else None
                    if not isinstance(name, str):
                        raise RtmpRefused("publish without a stream name")
                    self.stream_name = name


def _amf0_values(body: bytes, *, limit: int) -> list[object]:
    """The first `limit` AMF0 values of a command (objects are skipped, returned as None)."""
    out: list[object] = []
    pos = 0
    while pos < len(body) and len(out) < limit:
        value, pos = _amf0_value(body, pos, depth=0)
        out.append(value)
    return out


def _amf0_value(body: bytes, pos: int, *, depth: int) -> tuple[object, int]:
    if depth > 8:
        raise RtmpRefused("AMF0 nested too deep")
    if pos >= len(body):
        raise RtmpRefused("a truncated AMF0 value")
    marker = body[pos]
    pos += 1
    if marker == _AMF_NUMBER:
        _need(body, pos, 8)
        return struct.unpack(">d", body[pos : pos + 8])[0], pos + 8
    if marker == _AMF_BOOL:
        _need(body, pos, 1)
        return body[pos] != 0, pos + 1
    if marker == _AMF_STRING:
        return _amf0_string(body, pos)
    if marker in (_AMF_NULL, _AMF_UNDEFINED):
        return None, pos
    if marker in (_AMF_OBJECT, _AMF_ECMA_ARRAY):
        if marker == _AMF_ECMA_ARRAY:
            _need(body, pos, 4)
            pos += 4
        while True:
            _need(body, pos, 3)
            if body[pos : pos + 3] == b"\x00\x00\x09":
                return None, pos + 3
            _, pos = _amf0_string(body, pos)
            _, pos = _amf0_value(body, pos, depth=depth + 1)
    raise RtmpRefused(f"AMF0 marker {marker:#x} is not read before publish")


def _amf0_string(body: bytes, pos: int) -> tuple[str, int]:
    _need(body, pos, 2)
    n = int.from_bytes(body[pos : pos + 2], "big")
    _need(body, pos + 2, n)
    return body[pos + 2 : pos + 2 + n].decode("utf-8", "replace"), pos + 2 + n


def _need(body: bytes, pos: int, n: int) -> None:
    if pos + n > len(body):
        raise RtmpRefused("a truncated AMF0 value")
