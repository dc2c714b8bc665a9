"""Foundation media services (seed table 13) as runnable service functions.

The demo VoD service of FLAME-in-a-box:

    hls        the HLS test stream, generated once with the bundled ffmpeg
    origin     `python -m flame.media.origin`: serves it (ranges, validators, --delay-ms)
    cache      `python -m flame.media.cache`: the read-through edge surrogate
    server     the small httptools/uvloop HTTP/1.1 server both run on
    ranges, messages, files, freshness, store, playlist: the pieces, testable without sockets

The content SF (issue 16), `python -m flame.media.content`: ingest (tus, multipart), storage
(filesystem, S3), the metadata database, quality analysis and a CMS page (docs/media.md).
"""

from flame.media.errors import MediaError, StreamError

__all__ = ["MediaError", "StreamError"]
