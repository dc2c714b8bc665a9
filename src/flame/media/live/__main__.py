from flame.media.live.service import main

raise SystemExit(main())
