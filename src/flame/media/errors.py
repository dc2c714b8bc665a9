"""Exceptions of the media SFs.

::

    FlameError (flame.common.errors)
    └── MediaError              the media SF cannot do its job          exit 2
        └── StreamError         ffmpeg failed or wrote an incomplete stream
    ConfigError (flame.common.errors)   a bad flag or FLAME_* variable   exit 1

HTTP problems are never exceptions here: the servers answer them as JSON 4xx/5xx.
"""

from __future__ import annotations

from typing import ClassVar

from flame.common.errors import FlameError

__all__ = ["MediaError", "StreamError"]


class MediaError(FlameError):
    code: ClassVar[str] = "media_error"


class StreamError(MediaError):
    code: ClassVar[str] = "stream_error"
