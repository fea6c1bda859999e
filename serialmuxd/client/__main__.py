"""``python -m serialmuxd.client``: the same as the ``serialmux`` console script."""

from .main import main

raise SystemExit(main())
