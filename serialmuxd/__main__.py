"""``python -m serialmuxd`` is the same as the ``serialmuxd`` console script."""

import sys

from .cli import main

sys.exit(main())
