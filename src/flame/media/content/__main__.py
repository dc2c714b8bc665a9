"""``python -m flame.media.content``: the content SF."""

from flame.media.content.service import main

raise SystemExit(main())
