"""``python -m tfhub_cache.testing.hub``: serve until SIGTERM/SIGINT (see :mod:`tfhub_cache.testing.hub.cli`)."""

import sys

from tfhub_cache.testing.hub.cli import main

sys.exit(main())
