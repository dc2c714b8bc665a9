"""``python -m flame.media.lod``: the LOD SF."""

from flame.media.lod.service import main

raise SystemExit(main())
