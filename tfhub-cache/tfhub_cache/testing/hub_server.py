"""Another name for :mod:`tfhub_cache.testing.hub` (the loopback TF Hub), for tests that import it so.

``from tfhub_cache.testing.hub_server import HubServer`` and ``python -m tfhub_cache.testing.hub_server``
work like their ``tfhub_cache.testing.hub`` equivalents.
"""

import sys

from tfhub_cache.testing.hub import ARCHIVE_SUFFIXES, Faults, HubControl, HubServer, HubServerProcess, main

__all__ = ["ARCHIVE_SUFFIXES", "Faults", "HubControl", "HubServer", "HubServerProcess", "main"]

if __name__ == "__main__":
    sys.exit(main())
