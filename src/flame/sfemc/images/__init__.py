"""SF images and the image repository (SFEMC-6).

An SF image is what the process VIM runs: a compressed tarball holding ``flame-image.json`` (the
normalised manifest: entrypoint, environment, ports, health check, resource needs) and the SF's
directory under ``app/``. It is named by the sha256 of the compressed archive (``sha256:<hex>``).

Building is deterministic: entries sorted, mtimes, owners and modes normalised, compressor
headers without timestamps, so the same directory gives the same digest (with the same
compressor library version). zstd is used when the ``zstandard`` module is importable, gzip
otherwise: images are built once but decompressed on every placement, and zstd decompresses
several times faster at a similar ratio. Both are read back by their magic bytes.

Exceptions (all ``UserError``; the CLI exits 1, an HTTP API answers ``http_status``)::

    ImageError               a bad directory, flag or archive
    ├── ImageNotFound        no image with that digest or name           404
    ├── IntegrityError       the stored bytes no longer hash to the name  409
    ├── UnsafeArchive        an entry would escape the tree or is special 422
    ├── ImageTooLarge        a pushed image over the size limit           413
    └── QuotaExceeded        a tenant's images over its quota in bytes    413
        └── TooManyImages    ... or in number of images                   429
    ValidationFailed         the manifest has errors, each file:line:col  422

Modules: `manifest` (flame-sf.yaml, parsed and normalised), `archive` (build, digest, unpack),
`repository` (store, tag, verify, serve; owners: the operator's images are public, a tenant's
pushed ones its own), `push` (tenants' uploads: limits, quota), `deps` (an image's wheelhouse),
`errors`.
"""

from flame.sfemc.images.archive import (
    APP_PREFIX,
    GZIP_MAGIC,
    ZSTD_MAGIC,
    build_archive,
    build_image,
    digest_of,
    unpack_archive,
)
from flame.sfemc.images.errors import ImageError, ImageNotFound, IntegrityError, UnsafeArchive
from flame.sfemc.images.manifest import (
    IMAGE_MANIFEST,
    MANIFEST_FILE,
    ImageManifest,
    load_manifest,
    manifest_as_input,
    parse_manifest,
)
from flame.sfemc.images.repository import ImageInfo, ImageRepository, check_digest

__all__ = [
    "APP_PREFIX",
    "GZIP_MAGIC",
    "IMAGE_MANIFEST",
    "MANIFEST_FILE",
    "ZSTD_MAGIC",
    "ImageError",
    "ImageInfo",
    "ImageManifest",
    "ImageNotFound",
    "ImageRepository",
    "IntegrityError",
    "UnsafeArchive",
    "build_archive",
    "build_image",
    "check_digest",
    "digest_of",
    "load_manifest",
    "manifest_as_input",
    "parse_manifest",
    "unpack_archive",
]
