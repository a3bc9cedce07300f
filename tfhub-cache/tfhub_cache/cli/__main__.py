"""``python -m tfhub_cache.cli``: the same as ``tfhub-cache`` without the console script."""

from __future__ import annotations

import sys

from tfhub_cache.cli import main

sys.exit(main())
