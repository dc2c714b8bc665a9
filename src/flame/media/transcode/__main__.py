"""``python -m flame.media.transcode``: the transcoder SF."""

from flame.media.transcode.service import main

raise SystemExit(main())
